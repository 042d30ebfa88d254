//! The worker process's configuration (docs/configuration.md). Each setting is a clap argument with `env`, so an invalid
//! value stops the process at start with a message naming the variable.
use std::time::Duration;

use clap::Args;
use idemq_core::settings::{parse_bool, parse_duration};

pub const DEFAULT_WORKER_LEASE: &str = "10s";
pub const DEFAULT_JOB_TIMEOUT: &str = "30s";
pub const DEFAULT_JOB_MAX_ATTEMPTS: &str = "8";
pub const DEFAULT_WORKER_CONCURRENCY: &str = "4";
/// One queue's job slots at the default concurrency.
pub const DEFAULT_WORKER_WARM_CONNECTIONS: &str = "4";
pub const DEFAULT_QUEUE_BATCH_SIZE: &str = "50";
pub const DEFAULT_JOB_GROUPS: &str = "2";
pub const DEFAULT_QUEUE_POLL_INTERVAL: &str = "500ms";
pub const DEFAULT_QUEUE_BACKUP_FETCH_DELAY: &str = "20ms";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
pub const DEFAULT_DB_LOST_GRACE: &str = "30s";
pub const DEFAULT_RECONCILE_INTERVAL: &str = "30s";
/// 02:00 UTC every day (seconds first, as the `cron` crate reads it).
pub const DEFAULT_CLEANUP_SCHEDULE: &str = "0 0 2 * * *";
pub const DEFAULT_QUEUE_RETENTION: &str = "24h";
pub const DEFAULT_CLEANUP_BATCH_SIZE: &str = "1000";
/// Bounds of `IDEMQ_CLEANUP_BATCH_SIZE`: a batch is one short transaction.
pub const MAX_CLEANUP_BATCH_SIZE: u32 = crate::maintenance::cleanup::MAX_BATCH_SIZE;

/// Connections a worker process needs besides one per job in flight: the
/// heartbeat, fetch and acknowledgement of each queue, the LISTEN
/// connections, the watchdog and the background duties.
pub const WORKER_SPARE_CONNECTIONS: u32 = 8;

#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Jobs run at once per queue in this process.
    #[arg(long, env = "IDEMQ_WORKER_CONCURRENCY", value_name = "IDEMQ_WORKER_CONCURRENCY", default_value = DEFAULT_WORKER_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,
    /// Connections opened and warmed (a payment rehearsed on each, rolled
    /// back: `idemq_core::warmup`) before the worker takes jobs; 0: none.
    #[arg(long, env = "IDEMQ_WORKER_WARM_CONNECTIONS", value_name = "IDEMQ_WORKER_WARM_CONNECTIONS", default_value = DEFAULT_WORKER_WARM_CONNECTIONS)]
    pub worker_warm_connections: u32,
    /// A worker silent for this long is dead; its jobs go to the others.
    #[arg(long, env = "IDEMQ_WORKER_LEASE", value_name = "IDEMQ_WORKER_LEASE", default_value = DEFAULT_WORKER_LEASE, value_parser = parse_lease)]
    pub worker_lease: Duration,
    /// Attempts of a job before its operation finishes `failed` with a 500.
    #[arg(long, env = "IDEMQ_JOB_MAX_ATTEMPTS", value_name = "IDEMQ_JOB_MAX_ATTEMPTS", default_value = DEFAULT_JOB_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_max_attempts: u32,
    /// Time limit of one attempt.
    #[arg(long, env = "IDEMQ_JOB_TIMEOUT", value_name = "IDEMQ_JOB_TIMEOUT", default_value = DEFAULT_JOB_TIMEOUT, value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// Group transactions this process runs at once: the first attempts of
    /// jobs that become ready while all are busy run together in the next
    /// one, with one commit (`crate::job_groups`); 0: every job alone.
    #[arg(long, env = "IDEMQ_WORKER_JOB_GROUPS", value_name = "IDEMQ_WORKER_JOB_GROUPS", default_value = DEFAULT_JOB_GROUPS,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub job_groups: u32,
    /// Jobs fetched per round trip.
    #[arg(long, env = "IDEMQ_QUEUE_BATCH_SIZE", value_name = "IDEMQ_QUEUE_BATCH_SIZE", default_value = DEFAULT_QUEUE_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub queue_batch_size: u32,
    /// Poll besides LISTEN/NOTIFY: retries and delayed jobs send no notification.
    #[arg(long, env = "IDEMQ_QUEUE_POLL_INTERVAL", value_name = "IDEMQ_QUEUE_POLL_INTERVAL", default_value = DEFAULT_QUEUE_POLL_INTERVAL,
          value_parser = parse_duration)]
    pub queue_poll_interval: Duration,
    /// A job notice is fetched for at once by one live worker process (the
    /// job id picks it); the others fetch for it only if none of their own
    /// fetches starts within this delay (its owner is busy or gone). `0`:
    /// every process fetches for every notice at once.
    #[arg(long, env = "IDEMQ_QUEUE_BACKUP_FETCH_DELAY", value_name = "IDEMQ_QUEUE_BACKUP_FETCH_DELAY", default_value = DEFAULT_QUEUE_BACKUP_FETCH_DELAY,
          value_parser = parse_backup_fetch_delay)]
    pub queue_backup_fetch_delay: Duration,
    /// On SIGTERM/SIGINT, how long the jobs in flight may take to finish.
    /// Past it the process exits non-zero; other workers rescue those jobs
    /// after the lease.
    #[arg(long, env = "IDEMQ_SHUTDOWN_GRACE", value_name = "IDEMQ_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE,
          value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// The database unreachable for longer than this: the worker process
    /// exits non-zero (for its supervisor to restart). Shorter outages are
    /// ridden out.
    #[arg(long, env = "IDEMQ_DB_LOST_GRACE", value_name = "IDEMQ_DB_LOST_GRACE", default_value = DEFAULT_DB_LOST_GRACE,
          value_parser = parse_duration)]
    pub db_lost_grace: Duration,
    /// How often the reconciler looks for unfinished operations whose job is
    /// gone or dead (once per interval for the whole fleet; at least 1s).
    #[arg(long, env = "IDEMQ_RECONCILE_INTERVAL", value_name = "IDEMQ_RECONCILE_INTERVAL", default_value = DEFAULT_RECONCILE_INTERVAL,
          value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// `false`: this process does not run the scheduled cleanup (`idemq cleanup` still works).
    #[arg(long, env = "IDEMQ_CLEANUP_ENABLED", value_name = "IDEMQ_CLEANUP_ENABLED", default_value = "true", value_parser = parse_bool)]
    pub cleanup_enabled: bool,
    /// When the cleanup runs: a cron expression in UTC, seconds first (`0 0 2 * * *`).
    #[arg(long, env = "IDEMQ_CLEANUP_SCHEDULE", value_name = "IDEMQ_CLEANUP_SCHEDULE", default_value = DEFAULT_CLEANUP_SCHEDULE,
          value_parser = parse_cron)]
    pub cleanup_schedule: cron::Schedule,
    /// How long finished queue jobs are kept before the cleanup deletes them.
    #[arg(long, env = "IDEMQ_QUEUE_RETENTION", value_name = "IDEMQ_QUEUE_RETENTION", default_value = DEFAULT_QUEUE_RETENTION,
          value_parser = parse_duration)]
    pub queue_retention: Duration,
    /// Rows the cleanup deletes per batch (each batch is its own short transaction).
    #[arg(long, env = "IDEMQ_CLEANUP_BATCH_SIZE", value_name = "IDEMQ_CLEANUP_BATCH_SIZE", default_value = DEFAULT_CLEANUP_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CLEANUP_BATCH_SIZE as i64))]
    pub cleanup_batch_size: u32,
}

impl WorkerConfig {
    /// One connection per job slot (every queue) plus the spares.
    pub fn pool_needed(&self) -> u32 {
        self.worker_concurrency * idemq_core::queue::ALL.len() as u32 + WORKER_SPARE_CONNECTIONS
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_concurrency: 4,
            worker_warm_connections: 4,
            worker_lease: Duration::from_secs(10),
            job_max_attempts: 8,
            job_timeout: Duration::from_secs(30),
            job_groups: 2,
            queue_batch_size: 50,
            queue_poll_interval: Duration::from_millis(500),
            queue_backup_fetch_delay: Duration::from_millis(20),
            shutdown_grace: Duration::from_secs(30),
            db_lost_grace: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(30),
            cleanup_enabled: true,
            cleanup_schedule: parse_cron(DEFAULT_CLEANUP_SCHEDULE).expect("the default schedule parses"),
            queue_retention: Duration::from_secs(24 * 3600),
            cleanup_batch_size: 1000,
        }
    }
}

/// Zero allowed (every process fetches at once); at most 10 s, past which
/// the poll timer (500 ms by default) finds the job first anyway.
fn parse_backup_fetch_delay(s: &str) -> Result<Duration, String> {
    // `0`, `0ms`, `0s`: off (`parse_duration` refuses zero).
    let s = s.trim();
    if s.starts_with('0') && s.trim_start_matches('0').bytes().all(|b| b.is_ascii_alphabetic()) {
        return Ok(Duration::ZERO);
    }
    let d = parse_duration(s)?;
    if d > Duration::from_secs(10) {
        return Err("must be at most 10s".into());
    }
    Ok(d)
}

/// The lease is split into heartbeats; under 2 s they would flood the database.
fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(2) {
        return Err("must be at least 2s".into());
    }
    Ok(d)
}

/// A cron expression as the `cron` crate reads it: seconds first, 6 or 7
/// fields (`0 0 2 * * *`). Crontab's 5 fields are refused with a hint.
pub fn parse_cron(s: &str) -> Result<cron::Schedule, String> {
    use std::str::FromStr;
    let s = s.trim();
    let fields = s.split_whitespace().count();
    if fields == 5 {
        return Err(format!(
            "`{s}` has 5 fields; this schedule has seconds first (6 or 7 fields), e.g. `0 {s}`"
        ));
    }
    let schedule = cron::Schedule::from_str(s)
        .map_err(|e| format!("not a cron expression like `0 0 2 * * *` (seconds first): {e}"))?;
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(format!("`{s}` never fires again"));
    }
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules_have_seconds_first() {
        assert_eq!(
            parse_cron(DEFAULT_CLEANUP_SCHEDULE).unwrap().source(),
            "0 0 2 * * *"
        );
        assert!(parse_cron("* * * * * *").is_ok());
        let five = parse_cron("0 2 * * *").unwrap_err();
        assert!(five.contains("seconds first"), "{five}");
        assert!(parse_cron("every day").is_err());
        assert!(parse_cron("0 0 0 1 1 * 2001").is_err());
    }

    #[test]
    fn the_backup_fetch_delay_may_be_zero_and_is_bounded() {
        for zero in ["0", "0ms", " 0s "] {
            assert_eq!(parse_backup_fetch_delay(zero), Ok(Duration::ZERO), "{zero}");
        }
        assert_eq!(
            parse_backup_fetch_delay(DEFAULT_QUEUE_BACKUP_FETCH_DELAY),
            Ok(Duration::from_millis(20))
        );
        assert!(parse_backup_fetch_delay("11s").is_err());
        assert!(parse_backup_fetch_delay("soon").is_err());
        assert!(parse_backup_fetch_delay("05").is_err(), "a number needs its unit");
    }

    #[test]
    fn leases_are_at_least_two_seconds_and_bounded() {
        assert!(parse_lease("1s").is_err());
        assert_eq!(parse_lease("2s"), Ok(Duration::from_secs(2)));
        for huge in ["3651days", "18446744073709551615s"] {
            assert!(parse_lease(huge).is_err(), "{huge}");
        }
    }
}
