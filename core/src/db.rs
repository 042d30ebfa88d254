//! Pool and migrations (ours and apalis's).
pub mod apalis_overrides;

use std::{future::Future, pin::Pin, time::Duration};

use sqlx::{
    pool::PoolConnectionMetadata,
    postgres::{PgConnection, PgPoolOptions},
    PgPool,
};

use crate::Error;

/// How often a server backend checks, while it runs a statement, that its
/// client is still there. A worker killed mid-job leaves a backend that
/// otherwise keeps its statement (a lock wait, a slow query) and the row
/// locks of its transaction until the statement ends; with the check it is
/// gone within this interval and the job's next attempt is not blocked.
pub const CLIENT_CONNECTION_CHECK_INTERVAL: &str = "1s";

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, Error> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A request must fail fast (503) rather than hang when the database is gone.
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(prepare_connection)
        .connect(url)
        .await?;
    Ok(pool)
}

/// A second pool to the same database whose commits do not wait for their
/// WAL flush (`synchronous_commit = off` for every session), for the
/// worker's writes that carry no effect: apalis's fetch, acknowledgement and
/// heartbeat, and the attempt count. Why that is safe is the README's
/// "Durability of each commit": a Postgres crash can lose the last few
/// hundred milliseconds of these commits (an attempt goes uncounted, a job is
/// delivered again), and the operation row, locked by the job's own durable
/// transaction, makes both harmless; a worker's crash loses nothing committed.
/// Connects lazily, with the settings (and acquire timeout) of `pool`.
pub fn connect_async_commit(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .after_connect(prepare_connection)
        .connect_lazy_with(options)
}

fn prepare_connection(
    conn: &mut PgConnection,
    _: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        // PostgreSQL 14+ (Linux); older servers reject the name: run without it.
        let set = format!("SET client_connection_check_interval = '{CLIENT_CONNECTION_CHECK_INTERVAL}'");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(set)).execute(&mut *conn).await {
            tracing::debug!(error = %e, "client_connection_check_interval not available");
        }
        Ok(())
    })
}

/// apalis's schema first, then ours (which may index apalis's tables), then
/// our overrides of apalis's schema again: on an existing database a newer
/// apalis migration runs after ours and could undo them
/// (`apalis_overrides`).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    sqlx::migrate!("../migrations").run(pool).await?;
    apalis_overrides::reassert(pool).await?;
    Ok(())
}

/// Whether every migration of this build has been applied (for `/readyz`).
pub async fn migrations_current(pool: &PgPool) -> Result<bool, Error> {
    let latest = sqlx::migrate!("../migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(applied.unwrap_or(0) >= latest)
}
