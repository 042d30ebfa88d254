//! The ops listener (docs/ops-console.md): the apalis-board
//! dashboard, the operations view, `/metrics` — all behind the ops token.
pub mod auth;
pub mod board;
pub mod log_feed;
pub mod operations_view;
pub mod queues;

use std::{sync::Arc, time::Duration};

use axum::{
    middleware,
    routing::{get, post},
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub token: Arc<str>,
    pub metrics: Option<PrometheusHandle>,
    /// For the stored response of a cancelled operation.
    pub idempotency_ttl: Duration,
    /// Signs the browser session cookie (`auth::Sessions::new` in production).
    pub session: auth::Sessions,
    /// Ends the board's live log streams, which would hold a graceful shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub fn router(state: OpsState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = metrics.clone();
                async move { handle.map(|h| h.render()).unwrap_or_default() }
            }),
        )
        .route(auth::LOGOUT, post(auth::logout).with_state(state.clone()))
        .merge(operations_view::router(state.clone()))
        .merge(queues::router(state.clone()))
        .merge(board::router(&state.pool, state.shutdown.clone()))
        .layer(middleware::from_fn_with_state(state, auth::require_ops_token))
}

/// How often the gauges that need a query are refreshed (not per scrape).
pub const GAUGE_REFRESH: Duration = Duration::from_secs(10);

/// `idemq_queue_paused{queue}`: 1 while the queue is paused, else 0.
pub const QUEUE_PAUSED: &str = "idemq_queue_paused";
/// `idemq_queue_paused_seconds{queue}`: how long it has been paused (0 if not).
pub const QUEUE_PAUSED_SECONDS: &str = "idemq_queue_paused_seconds";

/// Refreshes `idemq_queue_jobs{queue,state}`, `idemq_operations{status}` and
/// the pause gauges.
pub fn spawn_gauges(pool: PgPool, shutdown: tokio_util::sync::CancellationToken) {
    metrics::describe_gauge!(
        QUEUE_PAUSED,
        "1 while the queue is paused (idemq queue pause), else 0"
    );
    metrics::describe_gauge!(
        QUEUE_PAUSED_SECONDS,
        "How long the queue has been paused (0 if not)"
    );
    tokio::spawn(async move {
        let mut every = tokio::time::interval(GAUGE_REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            if let Err(e) = refresh_gauges(&pool).await {
                tracing::warn!(error = %e, "cannot refresh queue gauges");
            }
        }
    });
}

pub async fn refresh_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    use idemq_core::telemetry::{OPERATIONS, QUEUE_JOBS};
    let jobs: Vec<(String, String, i64)> =
        sqlx::query!(r#"SELECT job_type, status, count(*) AS "n!" FROM apalis.jobs GROUP BY 1, 2"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.job_type, r.status, r.n))
            .collect();
    for queue in idemq_core::queue::ALL {
        for state in ["Pending", "Queued", "Running", "Done", "Failed", "Killed"] {
            let n = jobs
                .iter()
                .find(|(q, s, _)| q == queue && s == state)
                .map_or(0, |j| j.2);
            metrics::gauge!(QUEUE_JOBS, "queue" => queue, "state" => state).set(n as f64);
        }
    }
    let ops: Vec<(String, i64)> =
        sqlx::query!(r#"SELECT status, count(*) AS "n!" FROM operations GROUP BY 1"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.status, r.n))
            .collect();
    for status in ["queued", "running", "succeeded", "failed"] {
        let n = ops.iter().find(|(s, _)| s == status).map_or(0, |o| o.1);
        metrics::gauge!(OPERATIONS, "status" => status).set(n as f64);
    }
    let paused: Vec<(String, f64)> = sqlx::query!(
        r#"SELECT queue, extract(epoch FROM now() - paused_at)::float8 AS "seconds!" FROM queue_pauses"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.queue, r.seconds))
    .collect();
    for queue in idemq_core::queue::ALL {
        let since = paused.iter().find(|p| p.0 == queue).map(|p| p.1.max(0.0));
        metrics::gauge!(QUEUE_PAUSED, "queue" => queue).set(if since.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!(QUEUE_PAUSED_SECONDS, "queue" => queue).set(since.unwrap_or(0.0));
    }
    Ok(())
}
