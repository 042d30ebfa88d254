//! The API process: the public listener and, when `IDEMQ_OPS_TOKEN` is set,
//! the ops listener (dashboard, operations, `/metrics`) with the gauges it
//! reports. `idemq api` and `idemq dev` start it.
use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::ApiConfig, ops, AppState};

/// The public listener and, when `IDEMQ_OPS_TOKEN` is set, the ops listener.
pub struct ApiListeners {
    pub api: TcpListener,
    pub ops: Option<TcpListener>,
}

impl ApiListeners {
    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api.local_addr()
    }
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }
}

pub async fn bind_api(api: &ApiConfig) -> anyhow::Result<ApiListeners> {
    let listener = TcpListener::bind(api.api_addr)
        .await
        .with_context(|| format!("binding IDEMQ_API_ADDR {}", api.api_addr))?;
    let ops = match api.ops_token.as_deref().filter(|t| !t.is_empty()) {
        Some(_) => Some(
            TcpListener::bind(api.ops_addr)
                .await
                .with_context(|| format!("binding IDEMQ_OPS_ADDR {}", api.ops_addr))?,
        ),
        None => {
            tracing::warn!("IDEMQ_OPS_TOKEN is not set: the ops listener (dashboard, /metrics) is off");
            None
        }
    };
    Ok(ApiListeners { api: listener, ops })
}

/// Serves the API (and the ops listener) until `shutdown`. `metrics` is
/// the process's Prometheus recorder, which `/metrics` renders.
pub async fn serve_api(
    listeners: ApiListeners,
    pool: PgPool,
    api: &ApiConfig,
    idempotency_ttl: Duration,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_api_with(listeners, pool, api, idempotency_ttl, metrics, shutdown, None).await
}

/// `serve_api`, with `extra` routes beside the API's (`idemq dev`'s demo page).
pub async fn serve_api_with(
    listeners: ApiListeners,
    pool: PgPool,
    api: &ApiConfig,
    idempotency_ttl: Duration,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    extra: Option<axum::Router>,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listeners.api_addr()?, "api listening");
    let ops_task = match (listeners.ops, api.ops_token.clone()) {
        (Some(listener), Some(token)) => {
            tracing::info!(addr = %listener.local_addr()?, "ops listening");
            let state = ops::OpsState {
                pool: pool.clone(),
                token: token.into(),
                metrics,
                idempotency_ttl,
                session: ops::auth::Sessions::new(api.ops_https),
                shutdown: shutdown.clone(),
            };
            ops::spawn_gauges(pool.clone(), shutdown.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, ops::router(state))
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        _ => None,
    };
    idemq_core::warmup::warm(&pool, api.api_warm_connections).await;
    let state = AppState::new(pool, api);
    let served = match extra {
        None => crate::serve(listeners.api, state, shutdown.clone()).await,
        Some(extra) => {
            let stop = shutdown.clone();
            let app = crate::router(state).merge(extra);
            axum::serve(
                listeners.api,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        }
    };
    shutdown.cancel();
    if let Some(task) = ops_task {
        task.await??;
    }
    served?;
    Ok(())
}
