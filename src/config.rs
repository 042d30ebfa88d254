//! The settings of every subcommand (docs/configuration.md): the database and what both the API and the workers read.
//! Each process's own settings are declared beside it:
//! `idemq_api::config::ApiConfig`, `idemq_worker::config::WorkerConfig`.
use std::time::Duration;

use clap::Args;
use idemq_api::config::DEFAULT_API_POOL;
use idemq_core::settings::parse_duration;
use idemq_worker::config::WorkerConfig;

pub const DEFAULT_IDEMPOTENCY_TTL: &str = "24h";

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
