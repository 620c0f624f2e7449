//! A tenant's two environments. `live` is where production apps and runs live; `test`
//! is a separate space in the same tenant: apps synced with test credentials, events
//! sent with `ff_test_` keys and the runs they start. Nothing crosses between them.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Live,
    Test,
}

impl Environment {
    pub const ALL: [Environment; 2] = [Environment::Live, Environment::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(value: &str) -> Option<Environment> {
        Environment::ALL.into_iter().find(|e| e.as_str() == value)
    }

    /// For `skip_serializing_if`: live is the default and is left out of stored data.
    pub fn is_live(&self) -> bool {
        *self == Environment::Live
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_parse_from_and_print_as_their_names() {
        for env in Environment::ALL {
            assert_eq!(Environment::parse(env.as_str()), Some(env));
            assert_eq!(serde_json::to_value(env).unwrap(), env.as_str());
        }
        assert_eq!(Environment::parse("prod"), None);
        assert_eq!(Environment::default(), Environment::Live);
    }
}
