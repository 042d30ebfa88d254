//! Pool and migrations (ours and apalis's).
use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::Error;

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, Error> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A request must fail fast (503) rather than hang when the database is gone.
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    Ok(pool)
}

/// apalis's schema first, then ours (which may index apalis's tables).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    sqlx::migrate!("../migrations").run(pool).await?;
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
