//! What an identity may do: user roles and API-key scopes.
//!
//! Every route of the API requires one [`Scope`]. A user's [`Role`] grants a fixed set
//! of scopes; an API key holds the scopes it was created with. Keeping both on one
//! vocabulary means a route is described once, whoever calls it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only.
    Viewer,
    /// Create and edit functions, tools and tasks; send events; view runs; manage approvals.
    Member,
    /// Everything, including users, API keys and settings.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == value)
    }

    /// Whether this role may act with `scope`.
    pub fn grants(self, scope: Scope) -> bool {
        match self {
            Role::Admin => true,
            Role::Member => scope != Scope::Admin,
            Role::Viewer => scope.is_read(),
        }
    }
}

/// A permission a route requires and an API key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "events:send")]
    EventsSend,
    #[serde(rename = "events:read")]
    EventsRead,
    #[serde(rename = "runs:read")]
    RunsRead,
    #[serde(rename = "runs:write")]
    RunsWrite,
    #[serde(rename = "functions:read")]
    FunctionsRead,
    #[serde(rename = "functions:manage")]
    FunctionsManage,
    #[serde(rename = "tasks:read")]
    TasksRead,
    #[serde(rename = "tasks:write")]
    TasksWrite,
    #[serde(rename = "agents:manage")]
    AgentsManage,
    /// Users, API keys and settings; implies every other scope.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 10] = [
        Scope::EventsSend,
        Scope::EventsRead,
        Scope::RunsRead,
        Scope::RunsWrite,
        Scope::FunctionsRead,
        Scope::FunctionsManage,
        Scope::TasksRead,
        Scope::TasksWrite,
        Scope::AgentsManage,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsSend => "events:send",
            Scope::EventsRead => "events:read",
            Scope::RunsRead => "runs:read",
            Scope::RunsWrite => "runs:write",
            Scope::FunctionsRead => "functions:read",
            Scope::FunctionsManage => "functions:manage",
            Scope::TasksRead => "tasks:read",
            Scope::TasksWrite => "tasks:write",
            Scope::AgentsManage => "agents:manage",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Read scopes change nothing; they are all a viewer or an `ro` key may hold.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Scope::EventsRead | Scope::RunsRead | Scope::FunctionsRead | Scope::TasksRead
        )
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_only_read_members_do_all_but_administer_admins_do_everything() {
        for scope in Scope::ALL {
            assert_eq!(Role::Viewer.grants(scope), scope.is_read(), "{scope}");
            assert_eq!(Role::Member.grants(scope), scope != Scope::Admin, "{scope}");
            assert!(Role::Admin.grants(scope), "{scope}");
        }
    }

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            let json = serde_json::to_value(scope).unwrap();
            assert_eq!(json, scope.as_str());
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert_eq!(Scope::parse("runs:delete"), None);
        assert_eq!(Role::parse("owner"), None);
    }
}
