//! A worker's own listener (`IDEMQ_WORKER_HEALTH_ADDR`): `/healthz` for
//! liveness, `/readyz` for the database, `/metrics` for its jobs. No auth:
//! bind it to an address only the supervisor and Prometheus reach.
use std::net::SocketAddr;

use anyhow::Context;
use axum::{http::StatusCode, routing::get, Router};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub async fn spawn(addr: SocketAddr, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install_metrics();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding IDEMQ_WORKER_HEALTH_ADDR {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "worker health listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let pool = pool.clone();
                async move {
                    match sqlx::query!("SELECT 1 AS alive").fetch_one(&pool).await {
                        Ok(_) => (StatusCode::OK, "ready"),
                        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.map(|h| h.render()).unwrap_or_default() }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(())
}
