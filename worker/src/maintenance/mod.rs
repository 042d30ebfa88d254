//! The worker fleet's background duties, after River's `internal/maintenance`:
//! one [`Service`] that schedules every duty the same way, and one file per
//! duty ([`cleanup`], [`reconciler`]) with its config (named defaults,
//! validated once) and a `run_once` that returns what it did.
//!
//! The service, for each duty, in every worker process:
//! - **once per fleet**: at a tick every process tries to claim the tick in
//!   `duty_ticks` ([`claim`]); exactly one wins and runs it;
//! - **catch-up**: at start, the latest tick due by now is claimed and run if
//!   it never was (no worker was up at the time, or its runner died);
//! - **takeover, one rule for every duty**: a runner refreshes its claim
//!   every lease/5 while it runs; a claim not refreshed for one worker lease
//!   (`IDEMQ_WORKER_LEASE`) is free for the next claimant of that tick;
//! - **signals**: every step (claimed, claimed elsewhere, busy, finished,
//!   failed, nothing missed) is also sent on a broadcast channel, so tests
//!   await what happened instead of reading logs ([`TestSignals`]).
//!
//! The service keeps its own time (tokio sleeps to the schedule's next tick)
//! rather than apalis-cron's `CronScheduler`: the catch-up needs "which tick
//! was last due", which the scheduler cannot say; the reconciler's interval
//! is not a cron expression; and the scheduler's ticks have whole-second
//! resolution. README "Expiry and cleanup" says so too.
pub mod claim;
pub mod cleanup;
pub mod reconciler;
mod service;

use std::{future::Future, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use idemq_core::Error;

use crate::config::WorkerConfig;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use service::{DutyRunner, Service, Signal, Step, TestSignals, Why};

/// A background duty: something the fleet runs once per tick of its schedule.
pub trait Duty: Send + Sync + 'static {
    /// Its name in `duty_ticks` and the first word of its log lines.
    const NAME: &'static str;
    /// Log the routine steps (claimed, busy, nothing missed) at debug: for a
    /// duty that ticks every few seconds they would fill the log.
    const QUIET: bool = false;
    /// What one run did (counts), stored with the tick in `duty_ticks.result`.
    type Report: Serialize + std::fmt::Debug + Send + Sync + 'static;

    fn schedule(&self) -> Schedule;

    /// One run, to the end or until `stop` is cancelled (then it stops at
    /// its next safe point and reports what it did so far).
    fn run_once(
        &self,
        pool: &PgPool,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Report, Error>> + Send;
}

/// When a duty's ticks fall. Every process computes the same ticks, so a
/// tick's time names it fleet-wide.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression in UTC, seconds first.
    Cron(Box<cron::Schedule>),
    /// Multiples of the interval since the Unix epoch.
    Every(Duration),
}

impl Schedule {
    /// The latest tick at or before `now`: the one a starting process checks
    /// was run (catch-up).
    pub fn latest_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            // `after(t)` iterates from just after t; going back from just
            // after `now` gives the last tick at or before `now`.
            Schedule::Cron(s) => s.after(&(now + chrono::Duration::milliseconds(1))).next_back(),
            Schedule::Every(interval) => Some(tick_of(now, *interval)),
        }
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(s) => s.after(&t).next(),
            Schedule::Every(interval) => {
                tick_of(t, *interval).checked_add_signed(chrono::Duration::from_std(*interval).ok()?)
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron(s) => write!(f, "{}", s.source()),
            Schedule::Every(interval) => write!(f, "every {interval:?}"),
        }
    }
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

/// A duty setting out of range, named as the operator knows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {duty} setting {setting}: {reason}")]
pub struct ConfigError {
    pub duty: &'static str,
    pub setting: &'static str,
    pub reason: String,
}

/// Everything the service runs in a worker process, checked at start.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// The takeover rule's one figure: the worker lease.
    pub takeover_after: Duration,
    /// `None`: `IDEMQ_CLEANUP_ENABLED=false` (its settings are still checked).
    pub cleanup: Option<cleanup::Cleanup>,
    pub reconciler: reconciler::Reconciler,
}

impl MaintenanceConfig {
    /// The one place where the process's settings become duty configs.
    pub fn from_worker_config(cfg: &WorkerConfig, idempotency_ttl: Duration) -> Result<Self, ConfigError> {
        let cleanup = cleanup::Cleanup {
            schedule: cfg.cleanup_schedule.clone(),
            config: cleanup_config(cfg)?,
        };
        let reconciler = reconciler::ReconcilerConfig::new(reconciler::ReconcilerOptions {
            interval: cfg.reconcile_interval,
            // An operation is stale after one interval.
            stale_after: cfg.reconcile_interval,
            max_attempts: cfg.job_max_attempts,
            idempotency_ttl,
            ..Default::default()
        })?;
        Ok(MaintenanceConfig {
            takeover_after: cfg.worker_lease,
            cleanup: cfg.cleanup_enabled.then_some(cleanup),
            reconciler: reconciler::Reconciler { config: reconciler },
        })
    }
}

/// The cleanup settings a worker process (or `idemq cleanup`) was started with.
pub fn cleanup_config(cfg: &WorkerConfig) -> Result<cleanup::CleanupConfig, ConfigError> {
    cleanup::CleanupConfig::new(cleanup::CleanupOptions {
        batch_size: cfg.cleanup_batch_size,
        queue_retention: cfg.queue_retention,
        stale_worker_age: cleanup::DEFAULT_STALE_WORKER_AGE
            .max(cfg.worker_lease * cleanup::STALE_WORKER_LEASES),
        ..cleanup::CleanupOptions::default()
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_latest_due_tick_is_the_last_at_or_before_now() {
        let daily = Schedule::Cron(Box::new(cron::Schedule::from_str("0 0 2 * * *").unwrap()));
        assert_eq!(
            daily.latest_due(at("2026-03-10T01:59:59Z")),
            Some(at("2026-03-09T02:00:00Z"))
        );
        assert_eq!(
            daily.latest_due(at("2026-03-10T02:00:00Z")),
            Some(at("2026-03-10T02:00:00Z"))
        );
        assert_eq!(
            daily.latest_due(at("2026-03-10T13:30:00.500Z")),
            Some(at("2026-03-10T02:00:00Z"))
        );
        let secondly = Schedule::Cron(Box::new(cron::Schedule::from_str("* * * * * *").unwrap()));
        assert_eq!(
            secondly.latest_due(at("2026-03-10T13:30:07.250Z")),
            Some(at("2026-03-10T13:30:07Z"))
        );
        let every = Schedule::Every(Duration::from_secs(30));
        assert_eq!(
            every.latest_due(at("2026-03-10T10:00:29.999Z")),
            Some(at("2026-03-10T10:00:00Z"))
        );
    }

    #[test]
    fn the_next_tick_is_strictly_after() {
        let daily = Schedule::Cron(Box::new(cron::Schedule::from_str("0 0 2 * * *").unwrap()));
        assert_eq!(
            daily.next_after(at("2026-03-10T02:00:00Z")),
            Some(at("2026-03-11T02:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-03-10T01:59:59.900Z")),
            Some(at("2026-03-10T02:00:00Z"))
        );
        let every = Schedule::Every(Duration::from_secs(30));
        assert_eq!(
            every.next_after(at("2026-03-10T10:00:30Z")),
            Some(at("2026-03-10T10:01:00Z"))
        );
        assert_eq!(
            every.next_after(at("2026-03-10T10:00:29.999Z")),
            Some(at("2026-03-10T10:00:30Z"))
        );
    }

    #[test]
    fn ticks_are_the_same_in_every_process() {
        let i = Duration::from_secs(30);
        assert_eq!(
            tick_of(at("2026-03-10T10:00:29.999Z"), i),
            at("2026-03-10T10:00:00Z")
        );
        assert_eq!(tick_of(at("2026-03-10T10:00:30Z"), i), at("2026-03-10T10:00:30Z"));
        assert_eq!(tick_of(at("2026-03-10T10:00:31Z"), i), at("2026-03-10T10:00:30Z"));
    }

    #[test]
    fn the_process_settings_map_to_valid_duty_configs() {
        let day = Duration::from_secs(86_400);
        let m = MaintenanceConfig::from_worker_config(&WorkerConfig::default(), day).unwrap();
        assert_eq!(m.takeover_after, WorkerConfig::default().worker_lease);
        let cleanup = m.cleanup.expect("on by default");
        assert_eq!(cleanup.config, cleanup::CleanupConfig::default());
        assert_eq!(cleanup.schedule.source(), "0 0 2 * * *");
        assert_eq!(
            m.reconciler.config.options().interval,
            reconciler::DEFAULT_INTERVAL
        );
        assert_eq!(m.reconciler.config.options().max_attempts, 8);

        let off = WorkerConfig {
            cleanup_enabled: false,
            ..WorkerConfig::default()
        };
        assert!(MaintenanceConfig::from_worker_config(&off, day)
            .unwrap()
            .cleanup
            .is_none());
        let too_fast = WorkerConfig {
            reconcile_interval: Duration::from_millis(10),
            ..WorkerConfig::default()
        };
        let err = MaintenanceConfig::from_worker_config(&too_fast, day).unwrap_err();
        assert_eq!(err.setting, "IDEMQ_RECONCILE_INTERVAL");
    }

    #[test]
    fn stale_worker_age_is_at_least_ten_leases() {
        let cfg = WorkerConfig {
            worker_lease: Duration::from_secs(600),
            ..WorkerConfig::default()
        };
        let c = cleanup_config(&cfg).unwrap();
        assert_eq!(c.options().stale_worker_age, Duration::from_secs(6000));
    }
}
