//! The User aggregate: a dashboard user of one tenant, their role, whether they may log
//! in, and their sessions.
//!
//! Stream: `user-<uuid>`, stream type `user`, where the uuid is derived from the
//! normalised email ([`user_id_for_email`]). Deriving it makes the stream the email's
//! uniqueness guard (two creations race on one stream's expected version) and lets a
//! login find its user without a read model. Password hashes never enter the log: the
//! log records *that* a password was set, the hash lives in the secret store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::access::Role;
use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "user";

/// How many failure times a user's state remembers (enough for any sensible limit).
pub const RECENT_FAILURES_KEPT: usize = 20;

/// The namespace of user ids derived from emails (a fixed, random UUID).
const EMAIL_NAMESPACE: Uuid = Uuid::from_u128(0x5a0c_1f3e_8b7d_4e21_9c64_2d1f_0b3a_77e5);

pub fn stream_id(user_id: Uuid) -> String {
    format!("user-{user_id}")
}

/// Emails compare case-insensitively and without surrounding blanks.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

pub fn user_id_for_email(email: &str) -> Uuid {
    Uuid::new_v5(&EMAIL_NAMESPACE, normalise_email(email).as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: Uuid,
    pub tenant: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChanged {
    pub from: Role,
    pub to: Role,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {
    pub session_id: Uuid,
    pub expires_at: DateTime<Utc>,
    /// The client address the login came from, for audits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailed {
    /// `wrong_password` or `disabled`; never the password tried.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    #[serde(rename = "user.created")]
    Created(UserCreated),
    #[serde(rename = "user.role_changed")]
    RoleChanged(RoleChanged),
    #[serde(rename = "user.disabled")]
    Disabled { at: DateTime<Utc> },
    #[serde(rename = "user.enabled")]
    Enabled { at: DateTime<Utc> },
    /// The hash is in the secret store; this records when it changed.
    #[serde(rename = "user.password_changed")]
    PasswordChanged { at: DateTime<Utc> },
    #[serde(rename = "auth.logged_in")]
    LoggedIn(LoggedIn),
    #[serde(rename = "auth.login_failed")]
    LoginFailed(LoginFailed),
    #[serde(rename = "auth.logged_out")]
    LoggedOut { session_id: Uuid, at: DateTime<Utc> },
}

impl DomainEvent for UserEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::Created(_) => "user.created",
            UserEvent::RoleChanged(_) => "user.role_changed",
            UserEvent::Disabled { .. } => "user.disabled",
            UserEvent::Enabled { .. } => "user.enabled",
            UserEvent::PasswordChanged { .. } => "user.password_changed",
            UserEvent::LoggedIn(_) => "auth.logged_in",
            UserEvent::LoginFailed(_) => "auth.login_failed",
            UserEvent::LoggedOut { .. } => "auth.logged_out",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub user_id: Uuid,
    pub tenant: String,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    pub profile: Option<Profile>,
    pub role: Option<Role>,
    pub disabled: bool,
    /// Sessions started and not logged out, with their expiry.
    pub sessions: BTreeMap<Uuid, DateTime<Utc>>,
    /// Failed logins since the last successful one.
    pub failed_logins: u32,
    /// When the most recent of those failures happened (the last
    /// [`RECENT_FAILURES_KEPT`]), for limits that hold across processes and restarts.
    pub recent_failures: std::collections::VecDeque<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub password_changed_at: Option<DateTime<Utc>>,
}

impl UserState {
    /// Failed logins at or after `since` (since the last successful login).
    pub fn failures_since(&self, since: DateTime<Utc>) -> usize {
        self.recent_failures
            .iter()
            .filter(|at| **at >= since)
            .count()
    }

    /// Whether a token of `session_id` may act now: the user exists, is enabled, and
    /// the session was started and not ended.
    pub fn session_active(&self, session_id: Uuid, now: DateTime<Utc>) -> bool {
        self.profile.is_some()
            && !self.disabled
            && self.sessions.get(&session_id).is_some_and(|exp| *exp > now)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    Create(UserCreated),
    ChangeRole {
        role: Role,
        at: DateTime<Utc>,
    },
    Disable {
        at: DateTime<Utc>,
    },
    Enable {
        at: DateTime<Utc>,
    },
    RecordPasswordChange {
        at: DateTime<Utc>,
    },
    /// A login whose password checked out; refused if the user is disabled.
    RecordLogin(LoggedIn),
    RecordFailedLogin(LoginFailed),
    Logout {
        session_id: Uuid,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("a user with this email already exists")]
    AlreadyExists,
    #[error("no such user")]
    NotFound,
    #[error("the user is disabled")]
    Disabled,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> UserError {
    UserError::Invalid {
        field,
        message: message.into(),
    }
}

fn validate(created: &UserCreated) -> Result<(), UserError> {
    let email = &created.email;
    let at = email.find('@');
    if email.len() > 254
        || email != &normalise_email(email)
        || at.is_none_or(|i| i == 0 || i == email.len() - 1)
        || email.chars().any(char::is_whitespace)
    {
        return Err(invalid(
            "email",
            "must be an email address, like a@example.com",
        ));
    }
    if created.user_id != user_id_for_email(email) {
        return Err(invalid("user_id", "must be derived from the email"));
    }
    if created.name.trim().is_empty() || created.name.len() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    if created.tenant.is_empty() {
        return Err(invalid("tenant", "must not be empty"));
    }
    Ok(())
}

#[derive(Debug)]
pub struct User;

impl Decider for User {
    type State = UserState;
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;

    fn initial() -> UserState {
        UserState::default()
    }

    fn evolve(mut state: UserState, event: &UserEvent) -> UserState {
        match event {
            UserEvent::Created(c) => {
                state.profile = Some(Profile {
                    user_id: c.user_id,
                    tenant: c.tenant.clone(),
                    email: c.email.clone(),
                    name: c.name.clone(),
                    created_at: c.at,
                });
                state.role = Some(c.role);
            }
            UserEvent::RoleChanged(c) => state.role = Some(c.to),
            UserEvent::Disabled { .. } => state.disabled = true,
            UserEvent::Enabled { .. } => state.disabled = false,
            UserEvent::PasswordChanged { at } => state.password_changed_at = Some(*at),
            UserEvent::LoggedIn(login) => {
                // Expired sessions can never act again; forgetting them keeps the state small.
                state.sessions.retain(|_, exp| *exp > login.at);
                state.sessions.insert(login.session_id, login.expires_at);
                state.failed_logins = 0;
                state.recent_failures.clear();
                state.last_login_at = Some(login.at);
            }
            UserEvent::LoginFailed(failed) => {
                state.failed_logins += 1;
                state.recent_failures.push_back(failed.at);
                if state.recent_failures.len() > RECENT_FAILURES_KEPT {
                    state.recent_failures.pop_front();
                }
            }
            UserEvent::LoggedOut { session_id, .. } => {
                state.sessions.remove(session_id);
            }
        }
        state
    }

    fn decide(state: &UserState, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        let (current_role, command) = match (&state.profile, state.role, command) {
            (None, _, UserCommand::Create(created)) => {
                validate(&created)?;
                return Ok(vec![UserEvent::Created(created)]);
            }
            (Some(_), Some(role), command) => (role, command),
            (_, _, UserCommand::Create(_)) => return Err(UserError::AlreadyExists),
            _ => return Err(UserError::NotFound),
        };
        Ok(match command {
            UserCommand::Create(_) => return Err(UserError::AlreadyExists),
            UserCommand::ChangeRole { role, at } => {
                if role == current_role {
                    vec![]
                } else {
                    vec![UserEvent::RoleChanged(RoleChanged {
                        from: current_role,
                        to: role,
                        at,
                    })]
                }
            }
            UserCommand::Disable { at } if !state.disabled => vec![UserEvent::Disabled { at }],
            UserCommand::Enable { at } if state.disabled => vec![UserEvent::Enabled { at }],
            UserCommand::Disable { .. } | UserCommand::Enable { .. } => vec![],
            UserCommand::RecordPasswordChange { at } => vec![UserEvent::PasswordChanged { at }],
            UserCommand::RecordLogin(_) if state.disabled => return Err(UserError::Disabled),
            UserCommand::RecordLogin(login) => {
                if login.expires_at <= login.at {
                    return Err(invalid("expires_at", "must be after the login"));
                }
                vec![UserEvent::LoggedIn(login)]
            }
            UserCommand::RecordFailedLogin(failed) => vec![UserEvent::LoginFailed(failed)],
            UserCommand::Logout { session_id, at } => {
                if state.sessions.contains_key(&session_id) {
                    vec![UserEvent::LoggedOut { session_id, at }]
                } else {
                    vec![]
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, minute, 0).unwrap()
    }

    fn created(role: Role) -> UserCreated {
        UserCreated {
            user_id: user_id_for_email("ada@example.com"),
            tenant: "acme".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            role,
            at: at(0),
        }
    }

    fn login(session: u128, minute: u32, minutes_valid: i64) -> LoggedIn {
        LoggedIn {
            session_id: Uuid::from_u128(session),
            expires_at: at(minute) + chrono::Duration::minutes(minutes_valid),
            client: Some("127.0.0.1".into()),
            at: at(minute),
        }
    }

    #[test]
    fn ids_come_from_the_normalised_email() {
        assert_eq!(
            user_id_for_email("  Ada@Example.COM "),
            user_id_for_email("ada@example.com")
        );
        assert_ne!(
            user_id_for_email("ada@example.com"),
            user_id_for_email("bob@example.com")
        );
    }

    #[test]
    fn creates_a_user_once() {
        DeciderSpec::<User>::given([])
            .when(UserCommand::Create(created(Role::Member)))
            .then([UserEvent::Created(created(Role::Member))]);
        DeciderSpec::<User>::given([UserEvent::Created(created(Role::Member))])
            .when(UserCommand::Create(created(Role::Admin)))
            .then_error(|e| *e == UserError::AlreadyExists);
    }

    #[test]
    fn refuses_bad_emails_names_and_foreign_ids() {
        for email in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "Ada@example.com",
            "a da@x.io",
        ] {
            let mut c = created(Role::Viewer);
            c.email = email.into();
            c.user_id = user_id_for_email(email);
            DeciderSpec::<User>::given([])
                .when(UserCommand::Create(c))
                .then_error(|e| matches!(e, UserError::Invalid { field: "email", .. }));
        }
        let mut c = created(Role::Viewer);
        c.name = "  ".into();
        DeciderSpec::<User>::given([])
            .when(UserCommand::Create(c))
            .then_error(|e| matches!(e, UserError::Invalid { field: "name", .. }));
        let mut c = created(Role::Viewer);
        c.user_id = Uuid::nil();
        DeciderSpec::<User>::given([])
            .when(UserCommand::Create(c))
            .then_error(|e| {
                matches!(
                    e,
                    UserError::Invalid {
                        field: "user_id",
                        ..
                    }
                )
            });
    }

    #[test]
    fn commands_on_a_missing_user_are_refused() {
        DeciderSpec::<User>::given([])
            .when(UserCommand::ChangeRole {
                role: Role::Admin,
                at: at(1),
            })
            .then_error(|e| *e == UserError::NotFound);
        DeciderSpec::<User>::given([])
            .when(UserCommand::RecordLogin(login(1, 1, 15)))
            .then_error(|e| *e == UserError::NotFound);
    }

    #[test]
    fn role_changes_record_from_and_to_and_ignore_no_ops() {
        let state = DeciderSpec::<User>::given([UserEvent::Created(created(Role::Viewer))])
            .when(UserCommand::ChangeRole {
                role: Role::Admin,
                at: at(1),
            })
            .then([UserEvent::RoleChanged(RoleChanged {
                from: Role::Viewer,
                to: Role::Admin,
                at: at(1),
            })]);
        assert_eq!(state.role, Some(Role::Admin));
        DeciderSpec::<User>::given([UserEvent::Created(created(Role::Viewer))])
            .when(UserCommand::ChangeRole {
                role: Role::Viewer,
                at: at(1),
            })
            .then_nothing_happens();
    }

    #[test]
    fn a_disabled_user_cannot_log_in_and_loses_every_session() {
        let given = [
            UserEvent::Created(created(Role::Member)),
            UserEvent::LoggedIn(login(1, 1, 15)),
        ];
        let state = DeciderSpec::<User>::given(given.clone())
            .when(UserCommand::Disable { at: at(2) })
            .then([UserEvent::Disabled { at: at(2) }]);
        assert!(state.disabled);
        assert!(!state.session_active(Uuid::from_u128(1), at(3)));
        let mut disabled = given.to_vec();
        disabled.push(UserEvent::Disabled { at: at(2) });
        DeciderSpec::<User>::given(disabled.clone())
            .when(UserCommand::RecordLogin(login(2, 3, 15)))
            .then_error(|e| *e == UserError::Disabled);
        DeciderSpec::<User>::given(disabled.clone())
            .when(UserCommand::Disable { at: at(3) })
            .then_nothing_happens();
        let state = DeciderSpec::<User>::given(disabled)
            .when(UserCommand::Enable { at: at(4) })
            .then([UserEvent::Enabled { at: at(4) }]);
        // Enabling again does not revive the session it had before.
        assert!(state.session_active(Uuid::from_u128(1), at(5)));
    }

    #[test]
    fn sessions_end_at_logout_or_expiry() {
        let state = DeciderSpec::<User>::given([UserEvent::Created(created(Role::Member))])
            .when(UserCommand::RecordLogin(login(1, 0, 15)))
            .then([UserEvent::LoggedIn(login(1, 0, 15))]);
        assert!(state.session_active(Uuid::from_u128(1), at(14)));
        assert!(!state.session_active(Uuid::from_u128(1), at(15)));
        assert!(!state.session_active(Uuid::from_u128(2), at(1)));

        let given = [
            UserEvent::Created(created(Role::Member)),
            UserEvent::LoggedIn(login(1, 0, 15)),
        ];
        let state = DeciderSpec::<User>::given(given.clone())
            .when(UserCommand::Logout {
                session_id: Uuid::from_u128(1),
                at: at(1),
            })
            .then([UserEvent::LoggedOut {
                session_id: Uuid::from_u128(1),
                at: at(1),
            }]);
        assert!(!state.session_active(Uuid::from_u128(1), at(2)));
        DeciderSpec::<User>::given(given)
            .when(UserCommand::Logout {
                session_id: Uuid::from_u128(9),
                at: at(1),
            })
            .then_nothing_happens();
    }

    #[test]
    fn a_new_login_forgets_expired_sessions_and_resets_failures() {
        let state = DeciderSpec::<User>::given([
            UserEvent::Created(created(Role::Member)),
            UserEvent::LoggedIn(login(1, 0, 5)),
            UserEvent::LoginFailed(LoginFailed {
                reason: "wrong_password".into(),
                client: None,
                at: at(6),
            }),
        ])
        .when(UserCommand::RecordLogin(login(2, 10, 15)))
        .then([UserEvent::LoggedIn(login(2, 10, 15))]);
        assert_eq!(state.sessions.len(), 1);
        assert_eq!(state.failed_logins, 0);
        DeciderSpec::<User>::given([UserEvent::Created(created(Role::Member))])
            .when(UserCommand::RecordLogin(login(3, 10, 0)))
            .then_error(|e| {
                matches!(
                    e,
                    UserError::Invalid {
                        field: "expires_at",
                        ..
                    }
                )
            });
    }

    #[test]
    fn failed_logins_and_password_changes_are_recorded() {
        let failed = LoginFailed {
            reason: "wrong_password".into(),
            client: Some("10.0.0.1".into()),
            at: at(1),
        };
        let state = DeciderSpec::<User>::given([UserEvent::Created(created(Role::Member))])
            .when(UserCommand::RecordFailedLogin(failed.clone()))
            .then([UserEvent::LoginFailed(failed)]);
        assert_eq!(state.failed_logins, 1);
        assert_eq!(state.failures_since(at(1)), 1);
        assert_eq!(state.failures_since(at(2)), 0);
        let state = DeciderSpec::<User>::given([UserEvent::Created(created(Role::Member))])
            .when(UserCommand::RecordPasswordChange { at: at(2) })
            .then([UserEvent::PasswordChanged { at: at(2) }]);
        assert_eq!(state.password_changed_at, Some(at(2)));
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let events = [
            UserEvent::Created(created(Role::Admin)),
            UserEvent::RoleChanged(RoleChanged {
                from: Role::Admin,
                to: Role::Viewer,
                at: at(1),
            }),
            UserEvent::Disabled { at: at(2) },
            UserEvent::Enabled { at: at(3) },
            UserEvent::PasswordChanged { at: at(4) },
            UserEvent::LoggedIn(login(1, 5, 15)),
            UserEvent::LoginFailed(LoginFailed {
                reason: "disabled".into(),
                client: None,
                at: at(6),
            }),
            UserEvent::LoggedOut {
                session_id: Uuid::from_u128(1),
                at: at(7),
            },
        ];
        for event in events {
            let payload = event.to_payload();
            let back = UserEvent::from_stored(event.event_type(), payload.clone()).unwrap();
            assert_eq!(back, event);
            let text = payload.to_string();
            assert_eq!(
                UserEvent::from_stored_json(event.event_type(), &text).unwrap(),
                event
            );
        }
    }
}
