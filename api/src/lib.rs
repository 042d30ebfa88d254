//! The public HTTP API (DESIGN.md "The request path").
pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod rate_limit;
pub mod routes;
pub mod waiters;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{DefaultBodyLimit, Request},
    middleware,
    routing::{get, patch, post},
    Router,
};
use idemq_core::config::ApiConfig;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::{auth::TokenCache, error::ApiError, waiters::Waiters};

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tokens: Arc<TokenCache>,
    pub waiters: Waiters,
    pub require_idempotency_key: bool,
    pub body_limit_bytes: usize,
    /// `None` when rate limiting is switched off.
    pub limits: Option<Arc<rate_limit::Limits>>,
    pub trust_proxy: bool,
}

impl AppState {
    /// Also starts the completion listener for `Prefer: wait`.
    pub fn new(pool: PgPool, config: &ApiConfig) -> Self {
        let waiters = Waiters::default();
        waiters.spawn_listener(pool.clone());
        AppState {
            pool,
            tokens: Arc::default(),
            waiters,
            require_idempotency_key: config.require_idempotency_key,
            body_limit_bytes: config.body_limit_bytes,
            limits: config
                .rate_limit_enabled
                .then(|| rate_limit::Limits::new(config.rate_limit_sensitive, config.rate_limit_read)),
            trust_proxy: config.trust_proxy,
        }
    }
}

pub fn router(state: AppState) -> Router {
    use routes::*;
    let authenticated = Router::new()
        .route(invoices::MARK_PAID, patch(invoices::mark_paid))
        .route("/invoices/{id}", get(invoices::get))
        .route(applications::APPROVE, patch(applications::approve))
        .route(applications::REJECT, patch(applications::reject))
        .route("/applications/{id}", get(applications::get))
        .route(meter_readings::RECORD, post(meter_readings::record))
        .route("/contracts/{id}/meter-readings", get(meter_readings::list))
        .route("/operations/{id}", get(operations::get))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::guard));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(authenticated)
        .fallback(|| async { ApiError::NotFound("There is no such route.".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            tracing::info_span!(
                "request",
                method = %req.method(),
                route,
                principal = tracing::field::Empty,
                operation = tracing::field::Empty,
            )
        }))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
