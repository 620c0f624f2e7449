use crate::ExpectedVersion;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the expected version: somebody else appended first.
    #[error("stream `{stream_id}` is at version {actual}, not {expected}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// Some but not all of the batch's event ids are stored, or they belong to
    /// another stream: this is not a retry of an earlier append.
    #[error("event {event_id} is already stored, but the batch is not a retry of that append")]
    IdempotencyMismatch { event_id: uuid::Uuid },
    #[error("stream `{stream_id}` has type `{actual}`, not `{requested}`")]
    StreamTypeMismatch {
        stream_id: String,
        actual: String,
        requested: String,
    },
    #[error("invalid append: {0}")]
    InvalidAppend(&'static str),
    #[error("stored event at position {position} cannot be read: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("event log database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event log migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("event log backend error: {0}")]
    Backend(String),
    /// The database could not be reached (a shared copy of a connection-class error).
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("the event log writer has stopped")]
    WriterStopped,
}

impl StoreError {
    /// Worth retrying the same operation: a lost connection, a pool timeout.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| {
                        c.starts_with("08") || c == "40001" || c == "40P01" || c == "57P01"
                    })
            }
            StoreError::WriterStopped | StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}
