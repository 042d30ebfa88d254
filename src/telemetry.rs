//! Logs: pretty for a terminal, JSON in production (`IDEMQ_LOG_FORMAT=json`).
use tracing_subscriber::{fmt, EnvFilter};

pub const DEFAULT_FILTER: &str =
    "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_postgres=warn,tower_http=warn";

pub fn init(format: &str) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let stderr = fmt::layer().with_writer(std::io::stderr);
    let stderr = if format == "json" {
        stderr
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(crate::json_log::JsonLine)
            .boxed()
    } else {
        stderr.boxed()
    };
    // The ops board's live log (idemq_api::ops::log_feed): a copy of our
    // own lines for a browser that listens, nothing when none does.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(idemq_api::ops::log_feed::layer())
        .try_init();
}

/// Installs the process-wide Prometheus recorder (once) and registers every
/// idemq counter at 0. The handle renders `/metrics`.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        idemq_core::telemetry::RECORD_BATCH_SIZE.into(),
                    ),
                    &idemq_core::telemetry::RECORD_BATCH_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(idemq_core::telemetry::JOB_GROUP_SIZE.into()),
                    &idemq_core::telemetry::RECORD_BATCH_BUCKETS,
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            idemq_core::telemetry::register_all();
            Some(handle)
        })
        .clone()
}
