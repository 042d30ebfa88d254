//! The reconciler (docs/job-path.md, "Liveness"), in the style of River's job
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
//! The maintenance service (`super::Service`) runs it every
//! `IDEMQ_RECONCILE_INTERVAL`, once per tick for the whole fleet. Every action is logged
//! with the word `reconciler`, counted in `idemq_reconciler_actions_total
//! {action="reenqueued"|"failed"}` and in the report, which is also stored
//! with the tick in `duty_ticks.result`.
use std::time::Duration;

use idemq_core::{job, operation::OperationId, queue, telemetry::RECONCILER_ACTIONS, Error};
use serde::Serialize;
use sqlx::types::Uuid;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{ConfigError, Duty, Schedule};

/// The duty's name in `duty_ticks`.
pub const DUTY: &str = "reconciler";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Candidates handled per run; the rest wait for the next tick.
pub const DEFAULT_BATCH_SIZE: i64 = 500;

/// `IDEMQ_JOB_MAX_ATTEMPTS`'s default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// `IDEMQ_IDEMPOTENCY_TTL`'s default.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The knobs of the reconciler, unchecked. `ReconcilerConfig::new` checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilerOptions {
    /// Time between runs (one run per interval for the whole fleet).
    pub interval: Duration,
    /// An operation is left alone until it has been unchanged this long.
    pub stale_after: Duration,
    /// `IDEMQ_JOB_MAX_ATTEMPTS`: at this many attempts it is finished, not re-enqueued.
    pub max_attempts: u32,
    /// Candidates handled per run.
    pub batch_size: i64,
    /// `IDEMQ_IDEMPOTENCY_TTL`, for the expiry of operations it finishes.
    pub idempotency_ttl: Duration,
}

impl Default for ReconcilerOptions {
    fn default() -> Self {
        ReconcilerOptions {
            interval: DEFAULT_INTERVAL,
            stale_after: DEFAULT_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            batch_size: DEFAULT_BATCH_SIZE,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
        }
    }
}

/// Checked reconciler settings: validated once, at start. The default is the
/// default options (valid: see the tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcilerConfig(ReconcilerOptions);

impl ReconcilerConfig {
    pub fn new(o: ReconcilerOptions) -> Result<Self, ConfigError> {
        let bad = |setting, reason: String| {
            Err(ConfigError {
                duty: DUTY,
                setting,
                reason,
            })
        };
        if o.interval < MIN_INTERVAL {
            return bad(
                "IDEMQ_RECONCILE_INTERVAL",
                format!("{:?} is shorter than {MIN_INTERVAL:?}", o.interval),
            );
        }
        if o.max_attempts == 0 {
            return bad("IDEMQ_JOB_MAX_ATTEMPTS", "must be at least 1".into());
        }
        if o.batch_size < 1 {
            return bad("batch size", format!("{} is not at least 1", o.batch_size));
        }
        Ok(ReconcilerConfig(o))
    }

    pub fn options(&self) -> &ReconcilerOptions {
        &self.0
    }
}

/// The reconciler as the maintenance service runs it: every interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reconciler {
    pub config: ReconcilerConfig,
}

impl Duty for Reconciler {
    const NAME: &'static str = DUTY;
    /// Every 30 s by default: its routine steps at debug; what it does is
    /// logged at warn.
    const QUIET: bool = true;
    type Report = ReconcilerReport;

    fn schedule(&self) -> Schedule {
        Schedule::Every(self.config.options().interval)
    }

    async fn run_once(&self, pool: &PgPool, stop: &CancellationToken) -> Result<ReconcilerReport, Error> {
        run_until(pool, &self.config, stop).await
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
    run_until(pool, cfg, &CancellationToken::new()).await
}

/// One pass that stops between two candidates once `stop` is cancelled (the
/// rest wait for the next tick).
pub async fn run_until(
    pool: &PgPool,
    cfg: &ReconcilerConfig,
    stop: &CancellationToken,
) -> Result<ReconcilerReport, Error> {
    let cfg = cfg.options();
    let stale_ms = i64::try_from(cfg.stale_after.as_millis()).unwrap_or(i64::MAX / 2) as f64;
    // Dynamic, as the re-check in `reconcile_one`: both judge the job's state
    // with the one `JOB_STATE_SQL` (query! takes only literals).
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
        if stop.is_cancelled() {
            break;
        }
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
    cfg: &ReconcilerOptions,
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
    sqlx::query!(
        "UPDATE operations SET job_id = $2, status = 'queued', updated_at = now() WHERE id = $1",
        op.uuid(),
        job_id.to_string(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated_once_naming_the_setting() {
        assert_eq!(
            ReconcilerConfig::new(ReconcilerOptions::default()),
            Ok(ReconcilerConfig::default())
        );
        assert_eq!(ReconcilerConfig::default().options().interval, DEFAULT_INTERVAL);
        let err = ReconcilerConfig::new(ReconcilerOptions {
            interval: Duration::from_millis(10),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.setting, "IDEMQ_RECONCILE_INTERVAL");
        assert!(err.to_string().contains("IDEMQ_RECONCILE_INTERVAL"), "{err}");
        assert!(ReconcilerConfig::new(ReconcilerOptions {
            max_attempts: 0,
            ..Default::default()
        })
        .is_err());
        assert!(ReconcilerConfig::new(ReconcilerOptions {
            batch_size: 0,
            ..Default::default()
        })
        .is_err());
    }
}
