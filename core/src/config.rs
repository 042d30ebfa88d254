//! Configuration from the environment (DESIGN.md "Command line and
//! configuration"). Each setting is a clap argument with `env`, so an invalid
//! value stops the process at start with a message naming the variable.
use std::{net::SocketAddr, time::Duration};

use clap::Args;

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:3000";
pub const DEFAULT_OPS_ADDR: &str = "127.0.0.1:3001";
pub const DEFAULT_IDEMPOTENCY_TTL: &str = "24h";
pub const DEFAULT_WORKER_LEASE: &str = "10s";
pub const DEFAULT_JOB_TIMEOUT: &str = "30s";
pub const DEFAULT_JOB_MAX_ATTEMPTS: &str = "8";
pub const DEFAULT_WORKER_CONCURRENCY: &str = "16";
pub const DEFAULT_QUEUE_BATCH_SIZE: &str = "50";
pub const DEFAULT_QUEUE_POLL_INTERVAL: &str = "500ms";
pub const DEFAULT_BODY_LIMIT_BYTES: &str = "65536";
pub const DEFAULT_DB_MAX_CONNECTIONS: &str = "20";

/// The database, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Postgres URL. `idemq dev` starts a private cluster when it is unset.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections in this process's pool.
    #[arg(long, env = "IDEMQ_DB_MAX_CONNECTIONS", value_name = "IDEMQ_DB_MAX_CONNECTIONS", default_value = DEFAULT_DB_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,
}

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
    /// `false` accepts mutating requests without a key (the server makes one).
    #[arg(long, env = "IDEMQ_REQUIRE_IDEMPOTENCY_KEY", value_name = "IDEMQ_REQUIRE_IDEMPOTENCY_KEY", default_value = "true", value_parser = parse_bool)]
    pub require_idempotency_key: bool,
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
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_concurrency: 16,
            worker_lease: Duration::from_secs(10),
            job_max_attempts: 8,
            job_timeout: Duration::from_secs(30),
            queue_batch_size: 50,
            queue_poll_interval: Duration::from_millis(500),
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration like `30s` or `24h`: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
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

/// DESIGN.md's booleans: `true`/`false`, `1`/`0`.
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
}
