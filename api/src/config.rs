//! The API process's configuration (docs/configuration.md). Each setting is a clap argument with `env`, so an invalid
//! value stops the process at start with a message naming the variable.
use std::{net::SocketAddr, time::Duration};

use clap::Args;
use idemq_core::settings::parse_bool;

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:3000";
pub const DEFAULT_OPS_ADDR: &str = "127.0.0.1:3001";
pub const DEFAULT_BODY_LIMIT_BYTES: &str = "65536";
/// About the requests one API process has in the database at once at a few
/// hundred a second.
pub const DEFAULT_API_WARM_CONNECTIONS: &str = "8";
/// Record statements in flight at once; requests that arrive while all are
/// busy are recorded together by the next (`record_batch`).
pub const DEFAULT_RECORD_BATCHES: &str = "2";
/// Requests one record statement takes at most.
pub const DEFAULT_RECORD_BATCH_MAX: &str = "64";
/// Connections in an API process's pool unless `IDEMQ_DB_MAX_CONNECTIONS` says otherwise.
pub const DEFAULT_API_POOL: u32 = 20;
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
    /// Connections opened and warmed (a payment rehearsed on each, rolled
    /// back: `idemq_core::warmup`) before the API takes requests; 0: none.
    #[arg(long, env = "IDEMQ_API_WARM_CONNECTIONS", value_name = "IDEMQ_API_WARM_CONNECTIONS", default_value = DEFAULT_API_WARM_CONNECTIONS)]
    pub api_warm_connections: u32,
    /// Record statements in flight at once (group commit: requests that
    /// arrive while all are busy share the next one's commit); 0: each
    /// request records on its own.
    #[arg(long, env = "IDEMQ_API_RECORD_BATCHES", value_name = "IDEMQ_API_RECORD_BATCHES", default_value = DEFAULT_RECORD_BATCHES)]
    pub record_batches: usize,
    /// Requests one record statement takes at most (1–1000).
    #[arg(long, env = "IDEMQ_API_RECORD_BATCH_MAX", value_name = "IDEMQ_API_RECORD_BATCH_MAX", default_value = DEFAULT_RECORD_BATCH_MAX, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub record_batch_max: u16,
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
}
