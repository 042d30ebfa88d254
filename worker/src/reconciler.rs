//! The reconciler (DESIGN.md "Liveness"), in the style of River's job
//! rescuer: no operation stays `queued` or `running` for ever.
//!
//! apalis already rescues the jobs of a dead worker (its heartbeat sweep), and
//! our handler bounds the attempts. What is left is an operation whose job can
//! no longer run it:
//!
//! - **missing**: no apalis job row with the operation's `job_id` (deleted by
//!   hand, or by a cleanup that was too eager);
//! - **dead**: the job is `Killed`, or `Failed` with no apalis attempt left
//!   (our handler hands a job back as `Failed` when the database stays
//!   unreachable; after apalis's 25 it is never fetched again);
//! - **done early**: the job is `Done` but the operation is not finished.
//!
//! Such an operation, unchanged for longer than `stale_after`, is either
//! re-enqueued (a new job, and `operations.job_id` pointing at it, in one
//! transaction) or, when `operations.attempts` has reached the bound,
//! finished `failed` with the stored 500 (`job::finish_exhausted`). Each
//! candidate is handled under its operation's row lock (`SKIP LOCKED`: an
//! attempt in flight holds it), re-checked there, so a run never races a
//! worker and running twice is harmless.
//!
//! It runs every `IDEMQ_RECONCILE_INTERVAL` in every worker process, but once
//! per tick for the whole fleet (`idemq_core::duty`). Every action is logged
//! with the word `reconciler`, counted in `idemq_reconciler_actions_total
//! {action="reenqueued"|"failed"}` and in the report, which is also stored
//! with the tick in `duty_ticks.result`.
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use idemq_core::{duty, job, operation::OperationId, queue, telemetry::RECONCILER_ACTIONS, Error};
use serde::Serialize;
use sqlx::types::Uuid;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;

/// The duty's name in `duty_ticks`.
pub const DUTY: &str = "reconciler";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Candidates handled per run; the rest wait for the next tick.
pub const DEFAULT_BATCH_SIZE: i64 = 500;

/// Validated once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Time between runs (one run per interval for the whole fleet).
    pub interval: Duration,
    /// An operation is left alone until it has been unchanged this long.
    pub stale_after: Duration,
    /// `IDEMQ_JOB_MAX_ATTEMPTS`: at this many attempts it is finished, not re-enqueued.
    pub max_attempts: u32,
    pub batch_size: i64,
    /// `IDEMQ_IDEMPOTENCY_TTL`, for the expiry of operations it finishes.
    pub idempotency_ttl: Duration,
}

impl ReconcilerConfig {
    pub fn new(
        interval: Duration,
        stale_after: Duration,
        max_attempts: u32,
        batch_size: i64,
        idempotency_ttl: Duration,
    ) -> Result<Self, String> {
        if interval < MIN_INTERVAL {
            return Err(format!(
                "IDEMQ_RECONCILE_INTERVAL must be at least {MIN_INTERVAL:?}"
            ));
        }
        if max_attempts == 0 {
            return Err("IDEMQ_JOB_MAX_ATTEMPTS must be at least 1".into());
        }
        if batch_size < 1 {
            return Err("the reconciler's batch size must be at least 1".into());
        }
        Ok(ReconcilerConfig {
            interval,
            stale_after,
            max_attempts,
            batch_size,
            idempotency_ttl,
        })
    }

    /// The process's settings: an operation is stale after one interval.
    pub fn from_worker_config(cfg: &WorkerConfig, idempotency_ttl: Duration) -> Result<Self, String> {
        Self::new(
            cfg.reconcile_interval,
            cfg.reconcile_interval,
            cfg.job_max_attempts,
            DEFAULT_BATCH_SIZE,
            idempotency_ttl,
        )
    }
}

/// What one run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerReport {
    /// Stale unfinished operations whose job was missing, dead or done.
    pub candidates: u64,
    /// Re-enqueued because their job row was missing.
    pub requeued_missing: u64,
    /// Re-enqueued because their job was dead (`Killed`, `Failed` for good).
    pub requeued_dead: u64,
    /// Re-enqueued because their job was `Done` while they were not.
    pub requeued_done: u64,
    /// Finished `failed` (stored 500) because their attempts were used up.
    pub failed_exhausted: u64,
    /// Left alone: finished, locked by an attempt, or given a live job meanwhile.
    pub skipped: u64,
}

impl ReconcilerReport {
    pub fn actions(&self) -> u64 {
        self.requeued_missing + self.requeued_dead + self.requeued_done + self.failed_exhausted
    }
}

/// The state of an operation's job, as far as the reconciler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Missing,
    Dead,
    Done,
    /// Pending, queued, running, or failed with attempts left: apalis (and
    /// its orphan sweep) will run it.
    Alive,
}

/// The job state in SQL, for an `apalis.jobs` row `j` that may be absent.
const JOB_STATE_SQL: &str = "CASE
        WHEN j.id IS NULL THEN 'missing'
        WHEN j.status = 'Killed' OR (j.status = 'Failed' AND j.attempts >= j.max_attempts) THEN 'dead'
        WHEN j.status = 'Done' THEN 'done'
        ELSE 'alive' END";

fn parse_state(s: &str) -> JobState {
    match s {
        "missing" => JobState::Missing,
        "dead" => JobState::Dead,
        "done" => JobState::Done,
        _ => JobState::Alive,
    }
}

/// One pass over the stale unfinished operations.
pub async fn run_once(pool: &PgPool, cfg: &ReconcilerConfig) -> Result<ReconcilerReport, Error> {
    let stale_ms = i64::try_from(cfg.stale_after.as_millis()).unwrap_or(i64::MAX / 2) as f64;
    let candidates: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT o.id FROM operations o
         LEFT JOIN apalis.jobs j ON j.id = o.job_id
         WHERE o.finished_at IS NULL
           AND o.updated_at < now() - $1 * interval '1 millisecond'
           AND ({JOB_STATE_SQL}) <> 'alive'
         ORDER BY o.created_at
         LIMIT $2"
    )))
    .bind(stale_ms)
    .bind(cfg.batch_size)
    .fetch_all(pool)
    .await?;

    let mut report = ReconcilerReport {
        candidates: candidates.len() as u64,
        ..Default::default()
    };
    for id in candidates {
        reconcile_one(pool, cfg, OperationId::from_uuid(id), &mut report).await?;
    }
    if report.actions() > 0 {
        tracing::warn!(?report, "reconciler run acted");
    } else {
        tracing::debug!(?report, "reconciler run: nothing to do");
    }
    Ok(report)
}

async fn reconcile_one(
    pool: &PgPool,
    cfg: &ReconcilerConfig,
    op: OperationId,
    report: &mut ReconcilerReport,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    // Under the operation's lock, re-read everything: an attempt in flight
    // holds the lock (skip it), and the job may have changed meanwhile.
    let row: Option<(i32, String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.attempts, o.queue, o.job_id, {JOB_STATE_SQL}
         FROM operations o LEFT JOIN apalis.jobs j ON j.id = o.job_id
         WHERE o.id = $1 AND o.status IN ('queued', 'running')
         FOR UPDATE OF o SKIP LOCKED"
    )))
    .bind(op.uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, queue_name, old_job, state)) = row else {
        report.skipped += 1;
        return Ok(());
    };
    let state = parse_state(&state);
    if state == JobState::Alive {
        report.skipped += 1;
        return Ok(());
    }
    if u32::try_from(attempts).unwrap_or(0) >= cfg.max_attempts {
        tx.rollback().await?;
        if job::finish_exhausted(pool, op, attempts, cfg.idempotency_ttl).await? {
            tracing::warn!(operation = %op, job = old_job, ?state, attempts,
                "reconciler: attempts used up; operation finished failed with a stored 500");
            report.failed_exhausted += 1;
            metrics::counter!(RECONCILER_ACTIONS, "action" => "failed").increment(1);
        } else {
            report.skipped += 1;
        }
        return Ok(());
    }
    let job_id = queue::new_job_id();
    queue::push(&mut tx, &queue_name, job_id, op).await?;
    sqlx::query("UPDATE operations SET job_id = $2, status = 'queued', updated_at = now() WHERE id = $1")
        .bind(op.uuid())
        .bind(job_id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::warn!(operation = %op, old_job, new_job = %job_id, queue = queue_name, ?state, attempts,
        "reconciler: job missing, dead or done too early; operation re-enqueued");
    metrics::counter!(RECONCILER_ACTIONS, "action" => "reenqueued").increment(1);
    match state {
        JobState::Missing => report.requeued_missing += 1,
        JobState::Dead => report.requeued_dead += 1,
        JobState::Done => report.requeued_done += 1,
        JobState::Alive => unreachable!("handled above"),
    }
    Ok(())
}

/// The tick a moment belongs to: `at` rounded down to a multiple of the
/// interval since the Unix epoch, so that every process computes the same.
pub fn tick_of(at: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    let step = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX).max(1);
    let ms = at.timestamp_millis();
    Utc.timestamp_millis_opt(ms - ms.rem_euclid(step))
        .single()
        .unwrap_or(at)
}

/// The loop of a worker process: at each tick, claim it and, if this
/// process won, run once. Errors are logged and the next tick tries again;
/// it ends (`Ok`) when `stop` is cancelled.
pub async fn run_scheduled(
    pool: PgPool,
    cfg: ReconcilerConfig,
    instance: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(interval = ?cfg.interval, "reconciler scheduled");
    loop {
        let tick = tick_of(Utc::now(), cfg.interval);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = run_tick(&pool, &cfg, &instance, tick) => {
                if let Err(e) = r {
                    tracing::error!(%tick, error = %e, "reconciler tick failed; the next tick tries again");
                }
            }
        }
        // Sleep to the next tick, plus a little jitter so that the fleet's
        // claims do not all arrive in the same millisecond.
        let next = tick + chrono::Duration::from_std(cfg.interval).unwrap_or(chrono::Duration::MAX);
        let wait = (next - Utc::now()).to_std().unwrap_or_default()
            + Duration::from_millis(rand::random_range(0..=50));
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Claims `tick` for this process and runs the reconciler if it won.
pub async fn run_tick(
    pool: &PgPool,
    cfg: &ReconcilerConfig,
    instance: &str,
    tick: DateTime<Utc>,
) -> Result<Option<ReconcilerReport>, Error> {
    // A holder that died mid-run is replaced after one interval.
    let Some(claim) = duty::claim(pool, DUTY, tick, instance, cfg.interval).await? else {
        return Ok(None);
    };
    let report = run_once(pool, cfg).await?;
    let result = serde_json::to_value(&report).map_err(|e| Error::Corrupt(e.to_string()))?;
    duty::finish(pool, &claim, &result).await?;
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let day = Duration::from_secs(86_400);
        assert!(ReconcilerConfig::new(DEFAULT_INTERVAL, DEFAULT_INTERVAL, 8, 10, day).is_ok());
        let err = ReconcilerConfig::new(Duration::from_millis(10), DEFAULT_INTERVAL, 8, 10, day).unwrap_err();
        assert!(err.contains("IDEMQ_RECONCILE_INTERVAL"), "{err}");
        assert!(ReconcilerConfig::new(DEFAULT_INTERVAL, DEFAULT_INTERVAL, 0, 10, day).is_err());
        assert!(ReconcilerConfig::new(DEFAULT_INTERVAL, DEFAULT_INTERVAL, 8, 0, day).is_err());
        let from_env = ReconcilerConfig::from_worker_config(&WorkerConfig::default(), day).unwrap();
        assert_eq!(from_env.interval, DEFAULT_INTERVAL);
        assert_eq!(from_env.max_attempts, 8);
    }

    #[test]
    fn ticks_are_the_same_in_every_process() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let i = Duration::from_secs(30);
        assert_eq!(
            tick_of(at("2026-03-10T10:00:29.999Z"), i),
            at("2026-03-10T10:00:00Z")
        );
        assert_eq!(tick_of(at("2026-03-10T10:00:30Z"), i), at("2026-03-10T10:00:30Z"));
        assert_eq!(tick_of(at("2026-03-10T10:00:31Z"), i), at("2026-03-10T10:00:30Z"));
    }
}
