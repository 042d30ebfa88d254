//! The scheduled cleanup (docs/expiry-and-cleanup.md), in the style of
//! River's job cleaner: delete what is no longer needed in bounded batches,
//! each batch one short statement of its own (`DELETE … WHERE id IN (SELECT …
//! LIMIT n FOR UPDATE SKIP LOCKED)`), with a short pause between batches, so
//! that no lock is held for long and requests and jobs keep flowing.
//!
//! What goes, in this order:
//! 1. expired idempotency records (`operations` with `expires_at <= now()`;
//!    only finished ones have an expiry: queued or running never expire);
//! 2. finished queue jobs (`apalis.jobs`: `Done`, `Killed`, or `Failed` with
//!    no attempt left) done longer ago than `IDEMQ_QUEUE_RETENTION`;
//! 3. stale queue workers (`apalis.workers` silent for a long time) that no
//!    job row points at any more (`jobs.lock_by` references `workers.id`, and
//!    finished jobs keep it: they go in step 2 first);
//! 4. old `duty_ticks` rows, keeping the newest one of each duty (the
//!    catch-up at start compares against it).
//!
//! Scheduling is the maintenance service's (`super::Service`): once per tick
//! of `IDEMQ_CLEANUP_SCHEDULE` for the whole fleet, a missed tick caught up at
//! the next start. Running twice is harmless (every statement only deletes
//! what is due, and SKIP LOCKED lets two runs share the work).
use std::time::Duration;

use idemq_core::Error;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{ConfigError, Duty, Schedule};

/// The duty's name in `duty_ticks`.
pub const DUTY: &str = "cleanup";

pub const DEFAULT_BATCH_SIZE: u32 = 1000;
/// The largest `IDEMQ_CLEANUP_BATCH_SIZE`: a batch is one transaction, and
/// its locks must stay short.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// Between two batches: lets waiting lock requests, autovacuum and
/// replication catch up. 1,000 batches (1 M rows) spend 10 s pausing.
pub const DEFAULT_BATCH_PAUSE: Duration = Duration::from_millis(10);
pub const MAX_BATCH_PAUSE: Duration = Duration::from_secs(10);
/// `IDEMQ_QUEUE_RETENTION`'s default: finished jobs stay visible on the
/// dashboard for a day.
pub const DEFAULT_QUEUE_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A worker row silent this long belongs to a process that is gone (live
/// workers beat every lease/5, i.e. every 2 s by default).
pub const DEFAULT_STALE_WORKER_AGE: Duration = Duration::from_secs(3600);
/// Stale means at least this many leases, whatever the lease.
pub const STALE_WORKER_LEASES: u32 = 10;
/// Shorter would risk deleting a live worker that missed a few heartbeats.
pub const MIN_STALE_WORKER_AGE: Duration = Duration::from_secs(60);
/// `duty_ticks` rows are the record of past runs: kept a week.
pub const DEFAULT_DUTY_TICK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Upper bound of one batch statement: a batch that takes longer is
/// cancelled (and the run fails) rather than holding its locks.
pub const BATCH_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch waits at most this long for a table lock (e.g. behind a
/// migration) instead of queueing everybody else behind itself.
pub const BATCH_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The knobs of a cleanup run, unchecked. `CleanupConfig::new` checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    pub batch_size: u32,
    pub batch_pause: Duration,
    pub queue_retention: Duration,
    pub stale_worker_age: Duration,
    pub duty_tick_retention: Duration,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            batch_pause: DEFAULT_BATCH_PAUSE,
            queue_retention: DEFAULT_QUEUE_RETENTION,
            stale_worker_age: DEFAULT_STALE_WORKER_AGE,
            duty_tick_retention: DEFAULT_DUTY_TICK_RETENTION,
        }
    }
}

/// Checked cleanup settings: validated once, at start. The default is the
/// default options (valid: see the tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupConfig(CleanupOptions);

impl CleanupConfig {
    pub fn new(o: CleanupOptions) -> Result<Self, ConfigError> {
        let bad = |setting, reason: String| {
            Err(ConfigError {
                duty: DUTY,
                setting,
                reason,
            })
        };
        if !(1..=MAX_BATCH_SIZE).contains(&o.batch_size) {
            return bad(
                "IDEMQ_CLEANUP_BATCH_SIZE",
                format!("{} is not within 1..={MAX_BATCH_SIZE}", o.batch_size),
            );
        }
        if o.batch_pause > MAX_BATCH_PAUSE {
            return bad(
                "batch pause",
                format!("{:?} is longer than {MAX_BATCH_PAUSE:?}", o.batch_pause),
            );
        }
        if o.queue_retention.is_zero() {
            return bad("IDEMQ_QUEUE_RETENTION", "must be longer than zero".into());
        }
        if o.stale_worker_age < MIN_STALE_WORKER_AGE {
            return bad(
                "stale worker age",
                format!(
                    "{:?} is shorter than {MIN_STALE_WORKER_AGE:?}",
                    o.stale_worker_age
                ),
            );
        }
        if o.duty_tick_retention.is_zero() {
            return bad("duty tick retention", "must be longer than zero".into());
        }
        Ok(CleanupConfig(o))
    }

    pub fn options(&self) -> &CleanupOptions {
        &self.0
    }
}

/// What one run deleted, per table. Plain data for logs, `duty_ticks.result`,
/// `idemq cleanup` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    pub operations: u64,
    pub jobs: u64,
    pub workers: u64,
    pub duty_ticks: u64,
    /// Delete statements run (each its own short transaction).
    pub batches: u64,
    /// Stopped early by shutdown; the next run deletes the rest.
    pub interrupted: bool,
    pub elapsed_ms: u64,
}

impl CleanupReport {
    /// `(table, rows deleted)`, in the order the run visits them.
    pub fn per_table(&self) -> [(&'static str, u64); 4] {
        [
            ("operations", self.operations),
            ("apalis.jobs", self.jobs),
            ("apalis.workers", self.workers),
            ("duty_ticks", self.duty_ticks),
        ]
    }

    pub fn total(&self) -> u64 {
        self.per_table().iter().map(|(_, n)| n).sum()
    }
}

/// One cleanup, now, to the end.
pub async fn run_once(pool: &PgPool, config: &CleanupConfig) -> Result<CleanupReport, Error> {
    run_until(pool, config, &CancellationToken::new()).await
}

/// One cleanup that stops between two batches once `stop` is cancelled.
pub async fn run_until(
    pool: &PgPool,
    config: &CleanupConfig,
    stop: &CancellationToken,
) -> Result<CleanupReport, Error> {
    run_observed(pool, config, stop, &mut |_| {}).await
}

/// `run_until`, calling `after_batch` with the counts so far after each
/// committed batch (before the pause). A hook for tests that must act at a
/// known point of a run, e.g. stop it between two batches; a no-op otherwise.
pub async fn run_observed(
    pool: &PgPool,
    config: &CleanupConfig,
    stop: &CancellationToken,
    after_batch: &mut (dyn FnMut(&CleanupReport) + Send),
) -> Result<CleanupReport, Error> {
    let started = std::time::Instant::now();
    let mut report = CleanupReport::default();
    let result = delete_all(pool, config.options(), stop, &mut report, after_batch).await;
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // Deleted is deleted, whether or not the run went to the end.
    for (table, n) in report.per_table() {
        metrics::counter!(idemq_core::telemetry::CLEANUP_DELETED, "table" => table).increment(n);
    }
    match result {
        Ok(()) => {
            tracing::info!(
                operations = report.operations,
                jobs = report.jobs,
                workers = report.workers,
                duty_ticks = report.duty_ticks,
                batches = report.batches,
                total = report.total(),
                interrupted = report.interrupted,
                elapsed_ms = report.elapsed_ms,
                "cleanup finished: deleted {} rows",
                report.total()
            );
            Ok(report)
        }
        Err(e) => {
            tracing::error!(
                operations = report.operations,
                jobs = report.jobs,
                workers = report.workers,
                duty_ticks = report.duty_ticks,
                elapsed_ms = report.elapsed_ms,
                error = %e,
                "cleanup failed after deleting {} rows",
                report.total()
            );
            Err(e)
        }
    }
}

async fn delete_all(
    pool: &PgPool,
    o: &CleanupOptions,
    stop: &CancellationToken,
    report: &mut CleanupReport,
    after_batch: &mut (dyn FnMut(&CleanupReport) + Send),
) -> Result<(), Error> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2) as f64;
    // Each statement locks a batch of due rows (skipping rows others hold)
    // and deletes exactly those. `= ANY(ARRAY(…))` makes the batch an
    // init-plan, so the delete itself is a primary-key (or tid) lookup:
    // `IN (SELECT …)` let the planner hash-join against a full scan of the
    // table for every batch. `ORDER BY` keeps the scan on the partial index.
    let tables: [(&str, Option<f64>); 4] = [
        // Only finished operations have an expiry: the status test is a guard.
        (
            "DELETE FROM operations WHERE id = ANY(ARRAY(
                SELECT id FROM operations
                WHERE expires_at <= now() AND status IN ('succeeded', 'failed')
                ORDER BY expires_at
                LIMIT $1 FOR UPDATE SKIP LOCKED))",
            None,
        ),
        // The predicate is the one of the partial index apalis_jobs_finished_idx.
        (
            "DELETE FROM apalis.jobs WHERE id = ANY(ARRAY(
                SELECT id FROM apalis.jobs
                WHERE (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))
                  AND done_at < now() - $2 * interval '1 millisecond'
                ORDER BY done_at
                LIMIT $1 FOR UPDATE SKIP LOCKED))",
            Some(ms(o.queue_retention)),
        ),
        // FOR UPDATE conflicts with the FOR KEY SHARE lock that a job update
        // setting lock_by takes on its worker: such a worker is skipped.
        (
            "DELETE FROM apalis.workers WHERE id = ANY(ARRAY(
                SELECT w.id FROM apalis.workers w
                WHERE w.last_seen < now() - $2 * interval '1 millisecond'
                  AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)
                LIMIT $1 FOR UPDATE OF w SKIP LOCKED))",
            Some(ms(o.stale_worker_age)),
        ),
        // Composite key: the locked rows' tids (a locked row cannot move).
        (
            "DELETE FROM duty_ticks WHERE ctid = ANY(ARRAY(
                SELECT d.ctid FROM duty_ticks d
                WHERE d.tick < now() - $2 * interval '1 millisecond'
                  AND d.tick < (SELECT max(m.tick) FROM duty_ticks m WHERE m.duty = d.duty)
                LIMIT $1 FOR UPDATE SKIP LOCKED))",
            Some(ms(o.duty_tick_retention)),
        ),
    ];
    for (table, (sql, age_ms)) in tables.into_iter().enumerate() {
        loop {
            if stop.is_cancelled() {
                report.interrupted = true;
                return Ok(());
            }
            let deleted = match delete_batch(pool, sql, o.batch_size, age_ms).await {
                Ok(n) => n,
                // A job row began to point at a worker we were deleting (a
                // worker thought dead came back): leave the workers for now.
                Err(Error::Database(sqlx::Error::Database(db)))
                    if table == 2 && db.code().as_deref() == Some("23503") =>
                {
                    tracing::warn!(error = %db, "cleanup skips the stale workers this time");
                    break;
                }
                Err(e) => return Err(e),
            };
            report.batches += 1;
            match table {
                0 => report.operations += deleted,
                1 => report.jobs += deleted,
                2 => report.workers += deleted,
                _ => report.duty_ticks += deleted,
            }
            after_batch(report);
            // A short batch: nothing more is due (rows locked by others are
            // left for the next run).
            if deleted < u64::from(o.batch_size) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(o.batch_pause) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    Ok(())
}

/// One batch: one short transaction with a bounded statement and lock wait.
async fn delete_batch(
    pool: &PgPool,
    sql: &'static str,
    limit: u32,
    age_ms: Option<f64>,
) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    // SET LOCAL, as one statement: both end with the transaction.
    sqlx::query!(
        "SELECT set_config('statement_timeout', $1, true) AS statement_timeout,
                set_config('lock_timeout', $2, true) AS lock_timeout",
        BATCH_STATEMENT_TIMEOUT.as_millis().to_string(),
        BATCH_LOCK_TIMEOUT.as_millis().to_string(),
    )
    .fetch_one(&mut *tx)
    .await?;
    // Dynamic: one batch loop serves every table's statement (the `TABLES`
    // list), each a literal checked by the cleanup tests.
    let mut q = sqlx::query(sql).bind(i64::from(limit));
    if let Some(age) = age_ms {
        q = q.bind(age);
    }
    let deleted = q.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// The scheduled cleanup: the duty the maintenance service runs.
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// `IDEMQ_CLEANUP_SCHEDULE`.
    pub schedule: cron::Schedule,
    pub config: CleanupConfig,
}

impl Duty for Cleanup {
    const NAME: &'static str = DUTY;
    type Report = CleanupReport;

    fn schedule(&self) -> Schedule {
        Schedule::Cron(Box::new(self.schedule.clone()))
    }

    async fn run_once(&self, pool: &PgPool, stop: &CancellationToken) -> Result<CleanupReport, Error> {
        run_until(pool, &self.config, stop).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            CleanupConfig::new(CleanupOptions::default()),
            Ok(CleanupConfig::default())
        );
        assert_eq!(CleanupConfig::default().options().batch_size, DEFAULT_BATCH_SIZE);
    }

    #[test]
    fn invalid_options_name_the_setting() {
        let err = CleanupConfig::new(CleanupOptions {
            batch_size: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.setting, "IDEMQ_CLEANUP_BATCH_SIZE");
        assert!(err.to_string().contains("IDEMQ_CLEANUP_BATCH_SIZE"), "{err}");
        assert!(CleanupConfig::new(CleanupOptions {
            batch_size: MAX_BATCH_SIZE + 1,
            ..Default::default()
        })
        .is_err());
        assert!(CleanupConfig::new(CleanupOptions {
            stale_worker_age: Duration::from_secs(5),
            ..Default::default()
        })
        .is_err());
        assert!(CleanupConfig::new(CleanupOptions {
            batch_pause: Duration::from_secs(60),
            ..Default::default()
        })
        .is_err());
        assert!(CleanupConfig::new(CleanupOptions {
            queue_retention: Duration::ZERO,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn report_totals_per_table() {
        let r = CleanupReport {
            operations: 3,
            jobs: 2,
            workers: 1,
            duty_ticks: 4,
            batches: 5,
            ..Default::default()
        };
        assert_eq!(r.total(), 10);
        assert_eq!(r.per_table()[1], ("apalis.jobs", 2));
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["dutyTicks"], 4);
        assert_eq!(json["batches"], 5);
    }
}
