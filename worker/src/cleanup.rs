//! The scheduled cleanup (DESIGN.md "Expiry and cleanup"), in the style of
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
//! Scheduling: apalis-cron fires in every worker process; each process claims
//! the tick in Postgres (`idemq_core::duty`) and only the winner runs it, so
//! it runs once per tick for the whole fleet. A tick missed because no worker
//! was up is caught up once at the next start. Running twice is harmless
//! (every statement only deletes what is due, and SKIP LOCKED lets two runs
//! share the work).
use std::{sync::Arc, time::Duration};

use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerError};
use apalis_cron::{CronScheduler, Tick};
use chrono::{DateTime, Utc};
use idemq_core::{duty, Error};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;

/// The duty's name in `duty_ticks`.
pub const DUTY: &str = "cleanup";

pub const DEFAULT_BATCH_SIZE: u32 = 1000;
pub const MAX_BATCH_SIZE: u32 = crate::config::MAX_CLEANUP_BATCH_SIZE;
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
/// A claimed tick whose holder has not finished after this long is taken
/// over by the next claimant (its holder died mid-run).
pub const CLAIM_TAKEOVER_AFTER: Duration = Duration::from_secs(15 * 60);
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cleanup setting {setting}: {reason}")]
pub struct CleanupConfigError {
    pub setting: &'static str,
    pub reason: String,
}

/// Checked cleanup settings: validated once, at start. The default is the
/// default options (valid: see the tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupConfig(CleanupOptions);

impl CleanupConfig {
    pub fn new(o: CleanupOptions) -> Result<Self, CleanupConfigError> {
        let bad = |setting, reason: String| Err(CleanupConfigError { setting, reason });
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

    /// The settings a worker process (or `idemq cleanup`) was started with.
    pub fn from_worker_config(cfg: &WorkerConfig) -> Result<Self, CleanupConfigError> {
        CleanupConfig::new(CleanupOptions {
            batch_size: cfg.cleanup_batch_size,
            queue_retention: cfg.queue_retention,
            stale_worker_age: DEFAULT_STALE_WORKER_AGE.max(cfg.worker_lease * STALE_WORKER_LEASES),
            ..CleanupOptions::default()
        })
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
    sqlx::query("SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)")
        .bind(BATCH_STATEMENT_TIMEOUT.as_millis().to_string())
        .bind(BATCH_LOCK_TIMEOUT.as_millis().to_string())
        .execute(&mut *tx)
        .await?;
    let mut q = sqlx::query(sql).bind(i64::from(limit));
    if let Some(age) = age_ms {
        q = q.bind(age);
    }
    let deleted = q.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// The latest tick of `schedule` at or before `now`: the one a worker
/// starting at `now` checks was run (catch-up).
pub fn latest_due(schedule: &cron::Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // `after(t)` iterates from t; going back from just after `now` gives the
    // last tick at or before `now`.
    schedule
        .after(&(now + chrono::Duration::milliseconds(1)))
        .next_back()
}

/// The cleanup duty of one worker process: claims ticks and runs the ones it
/// wins, one at a time.
#[derive(Debug)]
pub struct CleanupDuty {
    pool: PgPool,
    config: CleanupConfig,
    instance: String,
    stop: CancellationToken,
    /// A run still going when the next tick fires: this process leaves that
    /// tick to the others (or to nobody: the running cleanup deletes it all).
    running: tokio::sync::Mutex<()>,
}

impl CleanupDuty {
    pub fn new(pool: PgPool, config: CleanupConfig, instance: &str, stop: CancellationToken) -> Self {
        CleanupDuty {
            pool,
            config,
            instance: instance.to_owned(),
            stop,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs `tick` if this process wins its claim. `Ok(None)`: another
    /// process has it (or this one is still busy with an earlier tick).
    pub async fn run_tick(&self, tick: DateTime<Utc>, why: &str) -> Result<Option<CleanupReport>, Error> {
        let Ok(_running) = self.running.try_lock() else {
            tracing::info!(%tick, why, "cleanup tick skipped: an earlier cleanup is still running here");
            return Ok(None);
        };
        let Some(claim) = duty::claim(&self.pool, DUTY, tick, &self.instance, CLAIM_TAKEOVER_AFTER).await?
        else {
            tracing::debug!(%tick, why, "cleanup tick claimed by another worker");
            return Ok(None);
        };
        tracing::info!(%tick, why, "cleanup tick claimed: running");
        let report = run_until(&self.pool, &self.config, &self.stop).await?;
        let result = serde_json::to_value(report).map_err(|e| Error::Corrupt(e.to_string()))?;
        duty::finish(&self.pool, &claim, &result).await?;
        Ok(Some(report))
    }

    /// At start: if the latest tick due by now was never run (no worker was
    /// up, or its runner died), run it, once.
    pub async fn catch_up(
        &self,
        schedule: &cron::Schedule,
        now: DateTime<Utc>,
    ) -> Result<Option<CleanupReport>, Error> {
        let Some(due) = latest_due(schedule, now) else {
            return Ok(None);
        };
        let ran = match duty::last_tick(&self.pool, DUTY).await? {
            Some(last) if last > due => None,
            // Claimed before: `claim` only succeeds if that run never finished
            // and its holder is long gone.
            _ => self.run_tick(due, "catch-up").await?,
        };
        if ran.is_none() {
            tracing::info!(%due, "cleanup catch-up: nothing missed (the last due tick was run, or is running)");
        }
        Ok(ran)
    }
}

/// The apalis-cron handler: the tick's scheduled time (the same in every
/// process, unlike `now()`) names the tick.
async fn on_tick(tick: Tick, duty: Data<Arc<CleanupDuty>>) -> Result<(), BoxDynError> {
    let at = i64::try_from(tick.get_timestamp())
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| format!("cron tick {} out of range", tick.get_timestamp()))?;
    if let Err(e) = duty.run_tick(at, "schedule").await {
        // Logged here with the word `cleanup`; the next tick tries again.
        tracing::error!(tick = %at, error = %e, "cleanup tick failed");
        return Err(Box::new(e));
    }
    Ok(())
}

/// The cleanup loop of a worker process: catches up a missed tick, then runs
/// the schedule until `stop` is cancelled (an in-flight cleanup stops at its
/// next batch). Ends with an error only if the scheduler itself fails.
pub async fn run_scheduled(
    pool: PgPool,
    config: CleanupConfig,
    schedule: cron::Schedule,
    instance: String,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let duty = Arc::new(CleanupDuty::new(pool, config, &instance, stop.clone()));
    // Taken before the scheduler starts, so that every tick after it is the
    // scheduler's and none falls between the two.
    let now = Utc::now();
    let catch_up = {
        let duty = duty.clone();
        let schedule = schedule.clone();
        async move {
            if let Err(e) = duty.catch_up(&schedule, now).await {
                tracing::error!(error = %e, "cleanup catch-up failed; the next tick runs it");
            }
        }
    };
    tracing::info!(schedule = schedule.source(), "cleanup scheduled (UTC)");
    let worker = WorkerBuilder::new(format!("cleanup@{instance}"))
        .backend(CronScheduler::new(schedule))
        .data(duty)
        .build(on_tick);
    let scheduler = worker.run_until(async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    let ((), result) = tokio::join!(catch_up, scheduler);
    result
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            CleanupConfig::new(CleanupOptions::default()),
            Ok(CleanupConfig::default())
        );
        assert_eq!(CleanupConfig::default().options().batch_size, 1000);
        let from_env = CleanupConfig::from_worker_config(&WorkerConfig::default()).unwrap();
        assert_eq!(from_env, CleanupConfig::default());
    }

    #[test]
    fn invalid_options_name_the_setting() {
        let err = CleanupConfig::new(CleanupOptions {
            batch_size: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.setting, "IDEMQ_CLEANUP_BATCH_SIZE");
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
    }

    #[test]
    fn stale_worker_age_is_at_least_ten_leases() {
        let cfg = WorkerConfig {
            worker_lease: Duration::from_secs(600),
            ..WorkerConfig::default()
        };
        let c = CleanupConfig::from_worker_config(&cfg).unwrap();
        assert_eq!(c.options().stale_worker_age, Duration::from_secs(6000));
    }

    #[test]
    fn latest_due_is_the_last_tick_at_or_before_now() {
        let daily = cron::Schedule::from_str("0 0 2 * * *").unwrap();
        assert_eq!(
            latest_due(&daily, at("2026-03-10T01:59:59Z")),
            Some(at("2026-03-09T02:00:00Z"))
        );
        assert_eq!(
            latest_due(&daily, at("2026-03-10T02:00:00Z")),
            Some(at("2026-03-10T02:00:00Z"))
        );
        assert_eq!(
            latest_due(&daily, at("2026-03-10T13:30:00.500Z")),
            Some(at("2026-03-10T02:00:00Z"))
        );
        let secondly = cron::Schedule::from_str("* * * * * *").unwrap();
        assert_eq!(
            latest_due(&secondly, at("2026-03-10T13:30:07.250Z")),
            Some(at("2026-03-10T13:30:07Z"))
        );
    }

    #[test]
    fn report_totals_per_table() {
        let r = CleanupReport {
            operations: 3,
            jobs: 2,
            workers: 1,
            duty_ticks: 4,
            ..Default::default()
        };
        assert_eq!(r.total(), 10);
        assert_eq!(r.per_table()[1], ("apalis.jobs", 2));
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["dutyTicks"], 4);
    }
}
