//! Once-per-tick execution of a background duty across the whole worker
//! fleet. apalis-cron (or an interval) fires in every process; each process
//! then `claim`s the tick in Postgres and only the winner runs it. Claims are
//! rows of `duty_ticks (duty, tick)`, so a run is also a record (who, when,
//! what it did), and "was this tick run?" is a query — which is how a missed
//! tick is found and caught up at the next start.
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::Error;

/// A claimed tick: run the duty, then `finish` it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub duty: String,
    pub tick: DateTime<Utc>,
}

/// Claims `tick` of `duty` for `worker`. `Some` for exactly one claimant
/// per tick — or for a later claimant when the first holder did not finish
/// within `takeover_after` (it died mid-run; duties are safe to run twice).
pub async fn claim(
    pool: &PgPool,
    duty: &str,
    tick: DateTime<Utc>,
    worker: &str,
    takeover_after: std::time::Duration,
) -> Result<Option<Claim>, Error> {
    let takeover_ms = i64::try_from(takeover_after.as_millis()).unwrap_or(i64::MAX / 2) as f64;
    let won: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO duty_ticks (duty, tick, claimed_by) VALUES ($1, $2, $3)
         ON CONFLICT (duty, tick) DO UPDATE
            SET claimed_by = EXCLUDED.claimed_by, claimed_at = now()
            WHERE duty_ticks.finished_at IS NULL
              AND duty_ticks.claimed_at < now() - $4 * interval '1 millisecond'
         RETURNING tick",
    )
    .bind(duty)
    .bind(tick)
    .bind(worker)
    .bind(takeover_ms)
    .fetch_optional(pool)
    .await?;
    Ok(won.map(|tick| Claim {
        duty: duty.to_owned(),
        tick,
    }))
}

/// Records the end of a run and what it did.
pub async fn finish(pool: &PgPool, claim: &Claim, result: &Value) -> Result<(), Error> {
    sqlx::query("UPDATE duty_ticks SET finished_at = now(), result = $3 WHERE duty = $1 AND tick = $2")
        .bind(&claim.duty)
        .bind(claim.tick)
        .bind(result)
        .execute(pool)
        .await?;
    Ok(())
}

/// The latest tick of `duty` that was claimed, if any.
pub async fn last_tick(pool: &PgPool, duty: &str) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(
        sqlx::query_scalar("SELECT max(tick) FROM duty_ticks WHERE duty = $1")
            .bind(duty)
            .fetch_one(pool)
            .await?,
    )
}
