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

/// What an error means for whoever asked: THE classifier, shared by the
/// request path (which status to answer) and the job path (whether another
/// attempt can help).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Passes by itself: the database unreachable or restarting, the pool
    /// exhausted, a serialization failure, a deadlock, a timeout. API: 503
    /// with `Retry-After`; job: retried with backoff.
    Transient,
    /// The database refused a value of the request (SQLSTATE class 22, data
    /// exception): the same input fails again. API: 400; job: final at once.
    InvalidInput,
    /// Any other database failure (a privilege, a trigger, a missing
    /// column): a fault the operator may fix, not the client. API: 500 with
    /// an error id; job: retried up to its attempt bound, then a stored 500.
    Internal,
    /// Stored data contradicts itself (`Error::Corrupt`): no attempt can
    /// succeed. API: 500 with an error id; job: final at once.
    Inconsistent,
}

impl ErrorClass {
    /// Whether another job attempt may succeed where this one failed.
    pub fn may_pass_on_retry(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Internal)
    }
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Database(e) => classify_db(e),
            Error::Queue(apalis_postgres::Error::Database(e)) => classify_db(e),
            Error::Corrupt(_) => ErrorClass::Inconsistent,
            Error::Queue(_) | Error::Migrate(_) => ErrorClass::Internal,
        }
    }

    /// Errors worth retrying: the database was unreachable or refused the
    /// transaction for a reason that passes (deadlock, serialization, timeout).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The SQLSTATE the database answered, if it answered one (for logs).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db))
            | Error::Queue(apalis_postgres::Error::Database(sqlx::Error::Database(db))) => {
                db.code().map(|c| c.into_owned())
            }
            _ => None,
        }
    }
}

/// The class of a sqlx error.
pub fn classify_db(e: &sqlx::Error) -> ErrorClass {
    if is_connection_loss(e) {
        return ErrorClass::Transient;
    }
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => ErrorClass::Transient,
        sqlx::Error::Database(db) if ends_session(db.as_ref()) => ErrorClass::Transient,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => classify_sqlstate(&code),
            None => ErrorClass::Internal,
        },
        _ => ErrorClass::Internal,
    }
}

/// A FATAL error ends the session: the connection could not be made or is
/// gone (the database refusing connections for a while, too many clients, a
/// shutdown), whatever its SQLSTATE. Except when it says who we are or where
/// we connect is wrong (invalid authorization 28xxx, no such database 3D000):
/// that lasts until an operator fixes the configuration.
fn ends_session(db: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::postgres::{PgDatabaseError, PgSeverity};
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
        return false;
    };
    matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)
        && !(pg.code().starts_with("28") || pg.code() == "3D000")
}

/// The class of a Postgres SQLSTATE (Appendix A of the Postgres manual).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // connection_exception (class 08); serialization_failure,
        // deadlock_detected, statement_completion_unknown (class 40);
        // too_many_connections; lock_not_available (lock_timeout);
        // query_canceled (statement_timeout); admin_shutdown,
        // crash_shutdown, cannot_connect_now, idle_session_timeout.
        c if c.starts_with("08") => ErrorClass::Transient,
        "40001" | "40P01" | "40003" | "53300" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "57P05" => {
            ErrorClass::Transient
        }
        // data_exception: e.g. 22021 (a NUL byte in text), 22P05 (NUL in
        // jsonb), 22003 (numeric out of range). The value, not the server.
        c if c.starts_with("22") => ErrorClass::InvalidInput,
        _ => ErrorClass::Internal,
    }
}

/// The connection to the database is gone or could not be made (the worker
/// supervisor's "database lost", a subset of `Transient`).
pub fn is_connection_loss(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now, and class 08
        // (connection exceptions).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for transient in [
            "08000", "08003", "08006", "08001", "40001", "40P01", "53300", "55P03", "57014", "57P01",
            "57P02", "57P03",
        ] {
            assert_eq!(classify_sqlstate(transient), ErrorClass::Transient, "{transient}");
        }
        for input in ["22021", "22P05", "22003", "22P02", "22001", "22007"] {
            assert_eq!(classify_sqlstate(input), ErrorClass::InvalidInput, "{input}");
        }
        // unique_violation, insufficient_privilege, raise_exception,
        // undefined_column, undefined_table, disk_full, check_violation.
        for internal in [
            "23505", "42501", "P0001", "42703", "42P01", "53100", "23514", "XX000",
        ] {
            assert_eq!(classify_sqlstate(internal), ErrorClass::Internal, "{internal}");
        }
    }

    #[test]
    fn client_side_errors_are_classified() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_db(&sqlx::Error::Io(refused)), ErrorClass::Transient);
        assert_eq!(classify_db(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        assert_eq!(classify_db(&sqlx::Error::PoolClosed), ErrorClass::Transient);
        assert_eq!(classify_db(&sqlx::Error::RowNotFound), ErrorClass::Internal);
        assert_eq!(Error::Corrupt("x".into()).class(), ErrorClass::Inconsistent);
        assert!(!ErrorClass::Inconsistent.may_pass_on_retry());
        assert!(!ErrorClass::InvalidInput.may_pass_on_retry());
        assert!(ErrorClass::Transient.may_pass_on_retry());
        assert!(ErrorClass::Internal.may_pass_on_retry());
    }
}
