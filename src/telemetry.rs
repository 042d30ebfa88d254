//! Logs: pretty for a terminal, JSON in production (`IDEMQ_LOG_FORMAT=json`).
use tracing_subscriber::{fmt, EnvFilter};

pub const DEFAULT_FILTER: &str =
    "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_postgres=warn,tower_http=warn";

pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
