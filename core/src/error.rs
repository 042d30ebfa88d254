/// Errors of the core layer. Business refusals are not errors: they are
/// final responses (`business::Outcome`). Everything here is infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(#[from] apalis_postgres::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl Error {
    /// Errors worth retrying: the database was unreachable or refused the
    /// transaction for a reason that passes (deadlock, serialization, timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => is_transient_db(e),
            Error::Queue(apalis_postgres::Error::Database(e)) => is_transient_db(e),
            _ => false,
        }
    }
}

fn is_transient_db(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // serialization_failure, deadlock_detected, query_canceled
            // (statement_timeout), admin/crash shutdown, cannot_connect_now
            Some("40001" | "40P01" | "57014" | "57P01" | "57P02" | "57P03" | "08006" | "08003")
        ),
        _ => false,
    }
}
