//! Process configuration. Every setting has a `FLOWFORGE_*` environment variable;
//! command-line flags override them (clap reads both, see `cli`).

use std::path::PathBuf;

use flowforge_store::sqlite::Durability;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `flowforge dev`: one developer, loopback, embedded SQLite.
    Dev,
    /// `flowforge serve`: production.
    Serve,
}

#[derive(Debug, Clone)]
pub enum Storage {
    Postgres {
        url: String,
        max_connections: u32,
    },
    Sqlite {
        data_dir: PathBuf,
        durability: Durability,
    },
}

impl Storage {
    /// Parses `FLOWFORGE_DATABASE_URL`: `postgres://…`, or `sqlite://DIR` for the
    /// embedded store in DIR.
    pub fn from_url(
        url: &str,
        max_connections: u32,
        durability: Durability,
    ) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Storage::Postgres {
                url: url.to_owned(),
                max_connections,
            })
        } else if let Some(dir) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if dir.is_empty() {
                return Err(
                    "a sqlite:// database URL needs a directory, e.g. sqlite://./.flowforge".into(),
                );
            }
            Ok(Storage::Sqlite {
                data_dir: PathBuf::from(dir),
                durability,
            })
        } else {
            Err(format!(
                "unsupported database URL `{}`: use postgres://… or sqlite://DIR",
                redact(url)
            ))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Storage::Postgres { url, .. } => format!("PostgreSQL {}", redact(url)),
            Storage::Sqlite { data_dir, .. } => format!("SQLite in {}", data_dir.display()),
        }
    }
}

/// A URL with its password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..]),
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub host: String,
    pub port: u16,
    pub storage: Storage,
    pub nats_url: Option<String>,
    /// `/ready` fails while a projection is more than this many log positions behind.
    pub ready_max_lag: u64,
    /// Largest accepted event request body, in bytes.
    pub max_event_bytes: usize,
    pub engine: flowforge_engine::EngineConfig,
}

impl Config {
    /// The embedded default on a data directory, for tests and tools.
    pub fn dev(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            mode: Mode::Dev,
            host: "127.0.0.1".into(),
            port: 8288,
            storage: Storage::Sqlite {
                data_dir: data_dir.into(),
                durability: Durability::Full,
            },
            nats_url: None,
            ready_max_lag: 10_000,
            max_event_bytes: 512 * 1024,
            engine: flowforge_engine::EngineConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_select_the_backend() {
        assert!(matches!(
            Storage::from_url("postgres://u:p@h/db", 8, Durability::Full),
            Ok(Storage::Postgres {
                max_connections: 8,
                ..
            })
        ));
        match Storage::from_url("sqlite://./data", 8, Durability::Normal) {
            Ok(Storage::Sqlite {
                data_dir,
                durability,
            }) => {
                assert_eq!(data_dir, PathBuf::from("./data"));
                assert_eq!(durability, Durability::Normal);
            }
            other => panic!("{other:?}"),
        }
        assert!(Storage::from_url("mysql://x", 8, Durability::Full).is_err());
        assert!(Storage::from_url("sqlite://", 8, Durability::Full).is_err());
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/ff"),
            "postgres://app:***@db:5432/ff"
        );
        assert_eq!(redact("postgres://app@db/ff"), "postgres://app@db/ff");
        let err = Storage::from_url("mysql://u:hunter2@h/db", 1, Durability::Full).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
