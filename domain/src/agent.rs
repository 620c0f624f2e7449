//! AI agents, members of a tenant's team.
//!
//! One aggregate per tenant, the `AgentDirectory` (stream `agents-<tenant>`): names are
//! unique within a tenant (they are what `@name` mentions resolve), and uniqueness is
//! a decision over all of them. A tenant has tens of agents, not millions, so one
//! stream holds them all and an agent's history is that stream's events for its id.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "agents";
pub const MAX_NAME: usize = 64;
pub const MAX_PROMPT: usize = 32 * 1024;
pub const MAX_SKILLS: usize = 100;

pub fn stream_id(tenant: &str) -> String {
    format!("agents-{tenant}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    #[default]
    Idle,
    Busy,
    Offline,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 4] = [
        AgentStatus::Online,
        AgentStatus::Idle,
        AgentStatus::Busy,
        AgentStatus::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Idle => "idle",
            AgentStatus::Busy => "busy",
            AgentStatus::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What describes an agent, as created or edited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProfile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub system_prompt: String,
    /// Ids of the functions it works through.
    #[serde(default)]
    pub functions: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AgentEvent {
    #[serde(rename = "agent.created")]
    Created {
        agent_id: Uuid,
        #[serde(flatten)]
        profile: AgentProfile,
        status: AgentStatus,
        #[serde(default)]
        skills: BTreeSet<String>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "agent.edited")]
    Edited {
        agent_id: Uuid,
        #[serde(flatten)]
        profile: AgentProfile,
        at: DateTime<Utc>,
    },
    #[serde(rename = "agent.status_changed")]
    StatusChanged {
        agent_id: Uuid,
        from: AgentStatus,
        to: AgentStatus,
        at: DateTime<Utc>,
    },
    #[serde(rename = "agent.skills_set")]
    SkillsSet {
        agent_id: Uuid,
        skills: BTreeSet<String>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "agent.deleted")]
    Deleted { agent_id: Uuid, at: DateTime<Utc> },
}

impl AgentEvent {
    pub fn agent_id(&self) -> Uuid {
        match self {
            AgentEvent::Created { agent_id, .. }
            | AgentEvent::Edited { agent_id, .. }
            | AgentEvent::StatusChanged { agent_id, .. }
            | AgentEvent::SkillsSet { agent_id, .. }
            | AgentEvent::Deleted { agent_id, .. } => *agent_id,
        }
    }
}

impl DomainEvent for AgentEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            AgentEvent::Created { .. } => "agent.created",
            AgentEvent::Edited { .. } => "agent.edited",
            AgentEvent::StatusChanged { .. } => "agent.status_changed",
            AgentEvent::SkillsSet { .. } => "agent.skills_set",
            AgentEvent::Deleted { .. } => "agent.deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub agent_id: Uuid,
    pub profile: AgentProfile,
    pub status: AgentStatus,
    pub skills: BTreeSet<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    pub agents: BTreeMap<Uuid, Agent>,
}

impl Directory {
    /// The agent that has this name now (names compare without case).
    pub fn named(&self, name: &str) -> Option<&Agent> {
        self.agents
            .values()
            .find(|a| a.deleted_at.is_none() && a.profile.name.eq_ignore_ascii_case(name))
    }

    pub fn active(&self, agent_id: Uuid) -> Option<&Agent> {
        self.agents
            .get(&agent_id)
            .filter(|a| a.deleted_at.is_none())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    Create {
        agent_id: Uuid,
        profile: AgentProfile,
        status: AgentStatus,
        skills: BTreeSet<String>,
        at: DateTime<Utc>,
    },
    Edit {
        agent_id: Uuid,
        profile: AgentProfile,
        at: DateTime<Utc>,
    },
    ChangeStatus {
        agent_id: Uuid,
        to: AgentStatus,
        at: DateTime<Utc>,
    },
    SetSkills {
        agent_id: Uuid,
        skills: BTreeSet<String>,
        at: DateTime<Utc>,
    },
    Delete {
        agent_id: Uuid,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("no such agent")]
    NotFound,
    #[error("an agent named `{0}` already exists")]
    NameTaken(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        field,
        message: message.into(),
    }
}

/// A name that `@name` can mention: a letter or digit, then letters, digits, `-`, `_`
/// or `.`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= MAX_NAME
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl AgentProfile {
    pub fn validate(&self) -> Result<(), AgentError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "1 to {MAX_NAME} letters, digits, `-`, `_` or `.`, starting with a letter or digit"
                ),
            ));
        }
        if self.system_prompt.len() > MAX_PROMPT {
            return Err(invalid(
                "system_prompt",
                format!("at most {MAX_PROMPT} bytes"),
            ));
        }
        if self.avatar.as_ref().is_some_and(|a| a.len() > 2048) {
            return Err(invalid("avatar", "at most 2048 characters"));
        }
        if self
            .model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 200)
        {
            return Err(invalid("model", "1 to 200 characters"));
        }
        Ok(())
    }
}

fn validate_skills(skills: &BTreeSet<String>) -> Result<(), AgentError> {
    if skills.len() > MAX_SKILLS {
        return Err(invalid("skills", format!("at most {MAX_SKILLS} skills")));
    }
    if skills.iter().any(|s| s.trim().is_empty() || s.len() > 200) {
        return Err(invalid("skills", "each skill is 1 to 200 characters"));
    }
    Ok(())
}

#[derive(Debug)]
pub struct AgentDirectory;

impl Decider for AgentDirectory {
    type State = Directory;
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;

    fn initial() -> Directory {
        Directory::default()
    }

    fn evolve(mut state: Directory, event: &AgentEvent) -> Directory {
        match event {
            AgentEvent::Created {
                agent_id,
                profile,
                status,
                skills,
                at,
            } => {
                state.agents.insert(
                    *agent_id,
                    Agent {
                        agent_id: *agent_id,
                        profile: profile.clone(),
                        status: *status,
                        skills: skills.clone(),
                        created_at: *at,
                        updated_at: *at,
                        deleted_at: None,
                    },
                );
            }
            AgentEvent::Edited {
                agent_id,
                profile,
                at,
            } => {
                if let Some(agent) = state.agents.get_mut(agent_id) {
                    agent.profile = profile.clone();
                    agent.updated_at = *at;
                }
            }
            AgentEvent::StatusChanged {
                agent_id, to, at, ..
            } => {
                if let Some(agent) = state.agents.get_mut(agent_id) {
                    agent.status = *to;
                    agent.updated_at = *at;
                }
            }
            AgentEvent::SkillsSet {
                agent_id,
                skills,
                at,
            } => {
                if let Some(agent) = state.agents.get_mut(agent_id) {
                    agent.skills = skills.clone();
                    agent.updated_at = *at;
                }
            }
            AgentEvent::Deleted { agent_id, at } => {
                if let Some(agent) = state.agents.get_mut(agent_id) {
                    agent.deleted_at = Some(*at);
                    agent.updated_at = *at;
                }
            }
        }
        state
    }

    fn decide(state: &Directory, command: AgentCommand) -> Result<Vec<AgentEvent>, AgentError> {
        let name_free = |name: &str, except: Uuid| match state.named(name) {
            Some(other) if other.agent_id != except => Err(AgentError::NameTaken(name.to_owned())),
            _ => Ok(()),
        };
        match command {
            AgentCommand::Create {
                agent_id,
                profile,
                status,
                skills,
                at,
            } => {
                profile.validate()?;
                validate_skills(&skills)?;
                if state.agents.contains_key(&agent_id) {
                    return Ok(Vec::new());
                }
                name_free(&profile.name, agent_id)?;
                Ok(vec![AgentEvent::Created {
                    agent_id,
                    profile,
                    status,
                    skills,
                    at,
                }])
            }
            AgentCommand::Edit {
                agent_id,
                profile,
                at,
            } => {
                let agent = state.active(agent_id).ok_or(AgentError::NotFound)?;
                profile.validate()?;
                name_free(&profile.name, agent_id)?;
                if agent.profile == profile {
                    return Ok(Vec::new());
                }
                Ok(vec![AgentEvent::Edited {
                    agent_id,
                    profile,
                    at,
                }])
            }
            AgentCommand::ChangeStatus { agent_id, to, at } => {
                let agent = state.active(agent_id).ok_or(AgentError::NotFound)?;
                if agent.status == to {
                    return Ok(Vec::new());
                }
                Ok(vec![AgentEvent::StatusChanged {
                    agent_id,
                    from: agent.status,
                    to,
                    at,
                }])
            }
            AgentCommand::SetSkills {
                agent_id,
                skills,
                at,
            } => {
                let agent = state.active(agent_id).ok_or(AgentError::NotFound)?;
                validate_skills(&skills)?;
                if agent.skills == skills {
                    return Ok(Vec::new());
                }
                Ok(vec![AgentEvent::SkillsSet {
                    agent_id,
                    skills,
                    at,
                }])
            }
            AgentCommand::Delete { agent_id, at } => {
                let Some(agent) = state.agents.get(&agent_id) else {
                    return Err(AgentError::NotFound);
                };
                if agent.deleted_at.is_some() {
                    return Ok(Vec::new());
                }
                Ok(vec![AgentEvent::Deleted { agent_id, at }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    type Spec = DeciderSpec<AgentDirectory>;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn profile(name: &str) -> AgentProfile {
        AgentProfile {
            name: name.into(),
            avatar: None,
            model: Some("claude-sonnet".into()),
            system_prompt: "You review pull requests.".into(),
            functions: BTreeSet::new(),
        }
    }

    fn created(n: u128, name: &str) -> AgentEvent {
        AgentEvent::Created {
            agent_id: id(n),
            profile: profile(name),
            status: AgentStatus::Idle,
            skills: BTreeSet::new(),
            at: t(0),
        }
    }

    fn create(n: u128, name: &str) -> AgentCommand {
        AgentCommand::Create {
            agent_id: id(n),
            profile: profile(name),
            status: AgentStatus::Idle,
            skills: BTreeSet::new(),
            at: t(0),
        }
    }

    #[test]
    fn an_agent_is_created_once() {
        let state = Spec::given([])
            .when(create(1, "reviewer"))
            .then([created(1, "reviewer")]);
        assert_eq!(state.named("REVIEWER").map(|a| a.agent_id), Some(id(1)));
        Spec::given([created(1, "reviewer")])
            .when(create(1, "reviewer"))
            .then_nothing_happens();
    }

    #[test]
    fn names_are_unique_per_tenant_whatever_their_case() {
        Spec::given([created(1, "reviewer")])
            .when(create(2, "Reviewer"))
            .then_error(|e| *e == AgentError::NameTaken("Reviewer".into()));
        Spec::given([created(1, "reviewer"), created(2, "writer")])
            .when(AgentCommand::Edit {
                agent_id: id(2),
                profile: profile("reviewer"),
                at: t(1),
            })
            .then_error(|e| matches!(e, AgentError::NameTaken(_)));
    }

    #[test]
    fn a_deleted_agent_frees_its_name_and_stays_in_history() {
        let given = [
            created(1, "reviewer"),
            AgentEvent::Deleted {
                agent_id: id(1),
                at: t(1),
            },
        ];
        let state = Spec::given(given.clone())
            .when(create(2, "reviewer"))
            .then([created(2, "reviewer")]);
        assert_eq!(state.agents[&id(1)].deleted_at, Some(t(1)));
        Spec::given(given.clone())
            .when(AgentCommand::ChangeStatus {
                agent_id: id(1),
                to: AgentStatus::Busy,
                at: t(2),
            })
            .then_error(|e| *e == AgentError::NotFound);
        Spec::given(given)
            .when(AgentCommand::Delete {
                agent_id: id(1),
                at: t(3),
            })
            .then_nothing_happens();
    }

    #[test]
    fn names_that_cannot_be_mentioned_are_refused() {
        for bad in ["", "-lead", "two words", "a@b", &"x".repeat(65)] {
            Spec::given([])
                .when(create(1, bad))
                .then_error(|e| matches!(e, AgentError::Invalid { field: "name", .. }));
        }
        assert!(valid_name("qa-bot_2.0"));
    }

    #[test]
    fn status_and_skills_changes_record_what_changed() {
        Spec::given([created(1, "reviewer")])
            .when(AgentCommand::ChangeStatus {
                agent_id: id(1),
                to: AgentStatus::Busy,
                at: t(1),
            })
            .then([AgentEvent::StatusChanged {
                agent_id: id(1),
                from: AgentStatus::Idle,
                to: AgentStatus::Busy,
                at: t(1),
            }]);
        let skills: BTreeSet<String> = ["code-review".to_owned()].into();
        let state = Spec::given([created(1, "reviewer")])
            .when(AgentCommand::SetSkills {
                agent_id: id(1),
                skills: skills.clone(),
                at: t(1),
            })
            .then([AgentEvent::SkillsSet {
                agent_id: id(1),
                skills: skills.clone(),
                at: t(1),
            }]);
        assert_eq!(state.agents[&id(1)].skills, skills);
        Spec::given([created(1, "reviewer")])
            .when(AgentCommand::SetSkills {
                agent_id: id(1),
                skills: [" ".to_owned()].into(),
                at: t(1),
            })
            .then_error(|e| {
                matches!(
                    e,
                    AgentError::Invalid {
                        field: "skills",
                        ..
                    }
                )
            });
    }

    #[test]
    fn events_read_back_as_recorded() {
        let event = created(1, "reviewer");
        let payload = event.to_payload();
        assert_eq!(payload["name"], "reviewer");
        assert_eq!(payload["status"], "idle");
        assert_eq!(
            AgentEvent::from_stored("agent.created", payload).unwrap(),
            event
        );
        assert_eq!(event.agent_id(), id(1));
    }
}
