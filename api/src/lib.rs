//! The public HTTP API (docs/request-path.md).
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod final_answers;
pub mod guard;
pub mod idempotency;
pub mod notices;
pub mod openapi;
pub mod ops;
pub mod process;
pub mod rate_limit;
pub mod record_batch;
pub mod routes;
pub mod schemas;
pub mod views;
pub mod waiters;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{DefaultBodyLimit, Request},
    middleware, Router,
};
use idemq_core::{db::KeptPool, notifier::Notifier};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::{
    auth::TokenCache,
    config::{ApiConfig, RateLimitScope},
    error::ApiError,
    final_answers::FinalAnswers,
    waiters::Waiters,
};

/// Shared by every request. One `Arc`: each layer and handler clones the
/// state, and one reference count is cheaper to bump than six (measured on
/// the 429 path, `idemq bench limited`).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct SharedState {
    pub pool: PgPool,
    /// `pool`, with the connections of records just made kept for the next
    /// request (`idemq_core::db::KeptPool`).
    pub records: KeptPool,
    /// Group commit of new records (`record_batch`).
    pub record_batch: record_batch::RecordBatcher,
    pub tokens: Arc<TokenCache>,
    pub waiters: Waiters,
    /// Wakes the workers after a job's commit (see `idemq_core::notifier`).
    pub notifier: Notifier,
    /// Recent `succeeded` answers, for replays without the database.
    pub final_answers: Arc<FinalAnswers>,
    pub require_idempotency_key: bool,
    pub body_limit_bytes: usize,
    /// `None` when rate limiting is switched off.
    pub limits: Option<Arc<rate_limit::Limits>>,
    pub trust_proxy: bool,
}

impl AppState {
    /// Also starts the process's notice listener (completions for
    /// `Prefer: wait`, token revocations).
    pub fn new(pool: PgPool, config: &ApiConfig) -> Self {
        let waiters = Waiters::default();
        let limits = config.rate_limit_enabled.then(|| {
            rate_limit::Limits::new(
                config.rate_limit_sensitive,
                config.rate_limit_read,
                (config.rate_limit_scope == RateLimitScope::Fleet).then(|| pool.clone()),
            )
        });
        let records = KeptPool::new(pool.clone());
        let tokens = Arc::<TokenCache>::default();
        notices::spawn(pool.clone(), waiters.clone(), &tokens);
        AppState(Arc::new(SharedState {
            notifier: Notifier::spawn(pool.clone()),
            final_answers: Arc::default(),
            records: records.clone(),
            record_batch: record_batch::RecordBatcher::spawn(
                records,
                config.record_batches,
                config.record_batch_max.into(),
                pool.options().get_acquire_timeout(),
            ),
            pool,
            tokens,
            waiters,
            require_idempotency_key: config.require_idempotency_key,
            body_limit_bytes: config.body_limit_bytes,
            limits,
            trust_proxy: config.trust_proxy,
        }))
    }
}

/// The public router and the OpenAPI document, from the same registrations.
///
/// An authenticated request meets the steps of the request path (docs/request-path.md)
/// in this order:
/// 1. authenticate: `auth` (401, and per client IP a 429 before its
///    database lookup of an unknown token);
/// 2. rate limit: `rate_limit` (429);
///
///    both in one layer, `guard::Guard`, which answers a flood's 429s
///    without a future;
/// 3. key: the `extract::Key` extractor (400), in each mutating handler's
///    signature after the path's `extract::Id`;
/// 4. body: the `extract::LimitedBody` extractor (413, 415), then
///    `idempotency::parse_body` and the route's checks in `submit` (400);
/// 5. fingerprint: `idempotency::submit`, over method, route, path
///    parameters and body;
/// 6. record: `submit` records the operation and its job in one transaction
///    (`idemq_core::idempotency::record_batch`, with the records of requests
///    that waited beside it: `record_batch`; else `idempotency::begin`);
/// 7. answer: `idempotency::answer` (202 with `views::OperationView`, or the
///    stored response).
///
/// Extractors run in their order in the signature, header ones before the
/// body's: a request with a bad key is refused 400 whatever its body.
pub fn router_and_doc(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    use routes::*;
    use utoipa::OpenApi;
    use utoipa_axum::{router::OpenApiRouter, routes};
    let authenticated = OpenApiRouter::new()
        .routes(routes!(invoices::mark_paid))
        .routes(routes!(invoices::get))
        .routes(routes!(applications::approve))
        .routes(routes!(applications::reject))
        .routes(routes!(applications::get))
        .routes(routes!(meter_readings::record))
        .routes(routes!(meter_readings::list))
        .routes(routes!(operations::get))
        // 1. Authenticate: the bearer token's principal; then
        // 2. rate limit: the principal's budget of the route class.
        .route_layer(guard::GuardLayer(state.clone()));
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::document))
        .merge(authenticated)
        .split_for_parts();
    let doc_json = openapi::DocumentJson(Arc::from(doc.to_json().unwrap_or_else(|_| "{}".into())));
    let router = router
        .layer(axum::Extension(doc_json))
        .fallback(|| async { ApiError::NotFound("There is no such route.".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        .layer(middleware::from_fn(record_http_metrics))
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
        .with_state(state);
    (router, doc)
}

/// `idemq_http_requests_total{route,status}` and the latency histogram, by
/// route template (bounded label values; unknown paths count as "unmatched").
async fn record_http_metrics(req: Request, next: middleware::Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(idemq_core::telemetry::HTTP_REQUESTS, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(idemq_core::telemetry::HTTP_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

pub fn router(state: AppState) -> Router {
    router_and_doc(state).0
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
