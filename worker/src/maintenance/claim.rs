//! Tick claims: the rows of `duty_ticks (duty, tick)`. A claim makes a tick
//! run once for the whole fleet, and the row is also the record of the run
//! (who, when, what it did), so "was this tick run?" is a query — which is
//! how the service finds a missed tick to catch up.
//!
//! The one takeover rule: a runner refreshes `claimed_at` while it runs (a
//! heartbeat); an unfinished claim not refreshed for `takeover_after` (the
//! worker lease) belongs to a dead runner, and the next claimant of that tick
//! takes it over. Every duty is safe to run twice, so a runner that was only
//! slow costs a second run, nothing more.
use std::time::Duration;

use chrono::{DateTime, Utc};
use idemq_core::Error;
use serde_json::Value;
use sqlx::PgPool;

/// A claimed tick: run the duty, then `finish` it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub duty: String,
    pub tick: DateTime<Utc>,
    pub claimed_by: String,
}

fn millis(d: Duration) -> f64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2) as f64
}

/// Claims `tick` of `duty` for `runner`. `Some` for exactly one claimant per
/// tick — or for a later claimant when the holder has neither finished nor
/// refreshed its claim within `takeover_after` (it died mid-run).
pub async fn claim(
    pool: &PgPool,
    duty: &str,
    tick: DateTime<Utc>,
    runner: &str,
    takeover_after: Duration,
) -> Result<Option<Claim>, Error> {
    let won = sqlx::query_scalar!(
        "INSERT INTO duty_ticks (duty, tick, claimed_by) VALUES ($1, $2, $3)
         ON CONFLICT (duty, tick) DO UPDATE
            SET claimed_by = EXCLUDED.claimed_by, claimed_at = now()
            WHERE duty_ticks.finished_at IS NULL
              AND duty_ticks.claimed_at < now() - $4::float8 * interval '1 millisecond'
         RETURNING tick",
        duty,
        tick,
        runner,
        millis(takeover_after),
    )
    .fetch_optional(pool)
    .await?;
    Ok(won.map(|tick| Claim {
        duty: duty.to_owned(),
        tick,
        claimed_by: runner.to_owned(),
    }))
}

/// The runner's heartbeat: keeps its claim from being taken over. `false`
/// when the claim is no longer this runner's (it was taken over).
pub async fn refresh(pool: &PgPool, claim: &Claim) -> Result<bool, Error> {
    let refreshed = sqlx::query!(
        "UPDATE duty_ticks SET claimed_at = now()
         WHERE duty = $1 AND tick = $2 AND claimed_by = $3 AND finished_at IS NULL",
        claim.duty,
        claim.tick,
        claim.claimed_by,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(refreshed == 1)
}

/// Records the end of a run and what it did.
pub async fn finish(pool: &PgPool, claim: &Claim, result: &Value) -> Result<(), Error> {
    sqlx::query!(
        "UPDATE duty_ticks SET finished_at = now(), result = $3 WHERE duty = $1 AND tick = $2",
        claim.duty,
        claim.tick,
        result,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The latest tick of `duty` that was claimed, if any.
pub async fn last_tick(pool: &PgPool, duty: &str) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(
        sqlx::query_scalar!("SELECT max(tick) FROM duty_ticks WHERE duty = $1", duty)
            .fetch_one(pool)
            .await?,
    )
}
