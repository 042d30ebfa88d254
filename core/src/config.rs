//! Configuration from the environment (docs/configuration.md). Each setting is a clap argument with `env`, so an invalid
//! value stops the process at start with a message naming the variable.
use std::{net::SocketAddr, time::Duration};

use clap::Args;

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:3000";
pub const DEFAULT_OPS_ADDR: &str = "127.0.0.1:3001";
pub const DEFAULT_IDEMPOTENCY_TTL: &str = "24h";
pub const DEFAULT_WORKER_LEASE: &str = "10s";
pub const DEFAULT_JOB_TIMEOUT: &str = "30s";
pub const DEFAULT_JOB_MAX_ATTEMPTS: &str = "8";
pub const DEFAULT_WORKER_CONCURRENCY: &str = "4";
pub const DEFAULT_QUEUE_BATCH_SIZE: &str = "50";
pub const DEFAULT_QUEUE_POLL_INTERVAL: &str = "500ms";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
pub const DEFAULT_DB_LOST_GRACE: &str = "30s";
pub const DEFAULT_RECONCILE_INTERVAL: &str = "30s";
pub const DEFAULT_BODY_LIMIT_BYTES: &str = "65536";
pub const DEFAULT_API_POOL: u32 = 20;
/// 02:00 UTC every day (seconds first, as the `cron` crate reads it).
pub const DEFAULT_CLEANUP_SCHEDULE: &str = "0 0 2 * * *";
pub const DEFAULT_QUEUE_RETENTION: &str = "24h";
pub const DEFAULT_CLEANUP_BATCH_SIZE: &str = "1000";
/// Bounds of `IDEMQ_CLEANUP_BATCH_SIZE`: a batch is one short transaction.
pub const MAX_CLEANUP_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_RATE_LIMIT_SENSITIVE: &str = "10/min";
/// Generous enough that a client polling every 100 ms is never limited.
pub const DEFAULT_RATE_LIMIT_READ: &str = "1200/min";

/// Where a principal's budget is counted (`IDEMQ_RATE_LIMIT_SCOPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateLimitScope {
    /// Across every API process on the database.
    Fleet,
    /// In each process on its own (N processes admit N budgets).
    Process,
}

/// A rate limit: `count` requests per `per`, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl RateSpec {
    /// `N/s`, `N/min` or `N/h`; burst N unless `;burst=B` says otherwise.
    pub fn parse(s: &str) -> Result<RateSpec, String> {
        const SYNTAX: &str = "expected N/s, N/min or N/h, optionally ;burst=B (e.g. 10/min;burst=20)";
        let mut parts = s.split(';');
        let rate = parts.next().unwrap_or_default().trim();
        let (n, unit) = rate.split_once('/').ok_or(SYNTAX)?;
        let count: u32 = n.trim().parse().map_err(|_| SYNTAX)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(SYNTAX.into()),
        };
        let mut burst = count;
        for extra in parts {
            let (k, v) = extra.split_once('=').ok_or(SYNTAX)?;
            if k.trim() != "burst" {
                return Err(SYNTAX.into());
            }
            burst = v.trim().parse().map_err(|_| SYNTAX)?;
        }
        if count == 0 || burst == 0 {
            return Err("the count and the burst must be at least 1".into());
        }
        Ok(RateSpec { count, per, burst })
    }

    /// The time one request's worth of budget takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

/// The database, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Postgres URL. `idemq dev` starts a private cluster when it is unset.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections in this process's pool. Unset: 20 for the API, and for a
    /// worker one per job slot plus spares (`WorkerConfig::pool_needed`).
    #[arg(long, env = "IDEMQ_DB_MAX_CONNECTIONS", value_name = "IDEMQ_DB_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: Option<u32>,
    /// A direct Postgres URL for sessions (LISTEN, the notifier). Set when
    /// DATABASE_URL is a transaction-mode pooler (PgBouncer): statements then
    /// run through it, one transaction per pool checkout (see README).
    #[arg(
        long,
        env = "IDEMQ_LISTEN_DATABASE_URL",
        value_name = "IDEMQ_LISTEN_DATABASE_URL"
    )]
    pub listen_database_url: Option<String>,
}

impl DatabaseConfig {
    /// The pool size of an API process.
    pub fn api_pool(&self) -> u32 {
        self.db_max_connections.unwrap_or(DEFAULT_API_POOL)
    }
    /// The pool size of a worker process.
    pub fn worker_pool(&self, worker: &WorkerConfig) -> u32 {
        self.db_max_connections.unwrap_or_else(|| worker.pool_needed())
    }
}

/// Connections a worker process needs besides one per job in flight: the
/// heartbeat, fetch and acknowledgement of each queue, the LISTEN
/// connections, the watchdog and the background duties.
pub const WORKER_SPARE_CONNECTIONS: u32 = 8;

/// Settings that both the API and the workers read.
#[derive(Debug, Clone, Args)]
pub struct SharedConfig {
    /// How long a finished idempotency record is kept (humantime: `24h`, `90s`).
    #[arg(long, env = "IDEMQ_IDEMPOTENCY_TTL", value_name = "IDEMQ_IDEMPOTENCY_TTL", default_value = DEFAULT_IDEMPOTENCY_TTL,
          value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
    /// `json` for production logs, `pretty` for a terminal.
    #[arg(long, env = "IDEMQ_LOG_FORMAT", value_name = "IDEMQ_LOG_FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
}

#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    #[arg(long, env = "IDEMQ_API_ADDR", value_name = "IDEMQ_API_ADDR", default_value = DEFAULT_API_ADDR)]
    pub api_addr: SocketAddr,
    #[arg(long, env = "IDEMQ_OPS_ADDR", value_name = "IDEMQ_OPS_ADDR", default_value = DEFAULT_OPS_ADDR)]
    pub ops_addr: SocketAddr,
    /// Bearer token (or basic-auth password) of the ops listener.
    #[arg(
        long,
        env = "IDEMQ_OPS_TOKEN",
        value_name = "IDEMQ_OPS_TOKEN",
        hide_env_values = true
    )]
    pub ops_token: Option<String>,
    /// `true` when the ops listener is reached over https (a TLS proxy in
    /// front): its session cookie is `Secure` and its own origin, for the
    /// cross-site check of state-changing requests, is `https://`.
    #[arg(long, env = "IDEMQ_OPS_HTTPS", value_name = "IDEMQ_OPS_HTTPS", default_value = "false", value_parser = parse_bool)]
    pub ops_https: bool,
    /// `false` accepts mutating requests without a key (the server makes one).
    #[arg(long, env = "IDEMQ_REQUIRE_IDEMPOTENCY_KEY", value_name = "IDEMQ_REQUIRE_IDEMPOTENCY_KEY", default_value = "true", value_parser = parse_bool)]
    pub require_idempotency_key: bool,
    /// `false` turns rate limiting off.
    #[arg(long, env = "IDEMQ_RATE_LIMIT_ENABLED", value_name = "IDEMQ_RATE_LIMIT_ENABLED", default_value = "true", value_parser = parse_bool)]
    pub rate_limit_enabled: bool,
    /// Budget of mutating requests per principal: `N/s`, `N/min` or `N/h`, `;burst=B` optional.
    #[arg(long, env = "IDEMQ_RATE_LIMIT_SENSITIVE", value_name = "IDEMQ_RATE_LIMIT_SENSITIVE", default_value = DEFAULT_RATE_LIMIT_SENSITIVE, value_parser = RateSpec::parse)]
    pub rate_limit_sensitive: RateSpec,
    /// `fleet`: a principal's budget holds across every API process (leased
    /// from Postgres); `process`: each process counts on its own.
    #[arg(
        long,
        env = "IDEMQ_RATE_LIMIT_SCOPE",
        value_name = "IDEMQ_RATE_LIMIT_SCOPE",
        default_value = "fleet",
        value_enum
    )]
    pub rate_limit_scope: RateLimitScope,
    /// Budget of reads and polling per principal.
    #[arg(long, env = "IDEMQ_RATE_LIMIT_READ", value_name = "IDEMQ_RATE_LIMIT_READ", default_value = DEFAULT_RATE_LIMIT_READ, value_parser = RateSpec::parse)]
    pub rate_limit_read: RateSpec,
    /// `true`: the client IP is the last address of `X-Forwarded-For` (set by
    /// our proxy); otherwise the socket's peer address.
    #[arg(long, env = "IDEMQ_TRUST_PROXY", value_name = "IDEMQ_TRUST_PROXY", default_value = "false", value_parser = parse_bool)]
    pub trust_proxy: bool,
    /// Largest request body accepted, in bytes; larger → 413.
    #[arg(long, env = "IDEMQ_BODY_LIMIT_BYTES", value_name = "IDEMQ_BODY_LIMIT_BYTES", default_value = DEFAULT_BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Jobs run at once per queue in this process.
    #[arg(long, env = "IDEMQ_WORKER_CONCURRENCY", value_name = "IDEMQ_WORKER_CONCURRENCY", default_value = DEFAULT_WORKER_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,
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
    /// Jobs fetched per round trip.
    #[arg(long, env = "IDEMQ_QUEUE_BATCH_SIZE", value_name = "IDEMQ_QUEUE_BATCH_SIZE", default_value = DEFAULT_QUEUE_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub queue_batch_size: u32,
    /// Poll besides LISTEN/NOTIFY: retries and delayed jobs send no notification.
    #[arg(long, env = "IDEMQ_QUEUE_POLL_INTERVAL", value_name = "IDEMQ_QUEUE_POLL_INTERVAL", default_value = DEFAULT_QUEUE_POLL_INTERVAL,
          value_parser = parse_duration)]
    pub queue_poll_interval: Duration,
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
        self.worker_concurrency * crate::queue::ALL.len() as u32 + WORKER_SPARE_CONNECTIONS
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_concurrency: 4,
            worker_lease: Duration::from_secs(10),
            job_max_attempts: 8,
            job_timeout: Duration::from_secs(30),
            queue_batch_size: 50,
            queue_poll_interval: Duration::from_millis(500),
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

/// The longest duration any setting takes. Durations are added to
/// instants, multiplied (the lease) and converted to chrono and Postgres
/// intervals; bounded here, none of that can overflow, and no setting needs
/// more than ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration like `30s` or `24h`: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > MAX_DURATION {
        return Err("must be at most 3650 days (10 years)".into());
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

/// The contract's booleans (docs/configuration.md): `true`/`false`, `1`/`0`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("must be true, false, 1 or 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_specs() {
        let r = RateSpec::parse("10/min").unwrap();
        assert_eq!((r.count, r.per, r.burst), (10, Duration::from_secs(60), 10));
        assert_eq!(r.interval(), Duration::from_secs(6));
        assert_eq!(RateSpec::parse("5/s;burst=20").unwrap().burst, 20);
        assert_eq!(RateSpec::parse("100/h").unwrap().per, Duration::from_secs(3600));
        for bad in [
            "",
            "10",
            "10/day",
            "x/min",
            "0/min",
            "10/min;burst=0",
            "10/min;b=2",
        ] {
            assert!(RateSpec::parse(bad).is_err(), "{bad}");
        }
    }

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
    fn booleans_are_strict() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn durations_reject_zero_and_garbage() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_lease("1s").is_err());
    }

    #[test]
    fn durations_are_bounded_so_nothing_downstream_overflows() {
        assert_eq!(parse_duration("3650days"), Ok(MAX_DURATION));
        for huge in [
            "3651days",
            "500000000000years",
            "600000000000years",
            "18446744073709551615s",
        ] {
            assert!(parse_duration(huge).is_err(), "{huge}");
            assert!(parse_lease(huge).is_err(), "{huge}");
        }
        // The largest accepted value survives what the worker does with it.
        let d = MAX_DURATION;
        assert!(std::time::Instant::now().checked_add(d * 10).is_some());
        assert!(chrono::Duration::from_std(d * 10).is_ok());
    }
}
