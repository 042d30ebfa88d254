//! apalis-board (UI and its API) for every queue. Read-only here: its
//! job-pushing `PUT` routes are refused with 403 — jobs enter only through
//! the public API (the board would accept any task id, and a non-ULID id
//! blocks a queue).
use std::sync::{Arc, Mutex};

use apalis_board::axum::{
    framework::{ApiBuilder, RegisterRoute},
    sse::TracingBroadcaster,
    ui::ServeUI,
};
use apalis_postgres::{Config, PostgresStorage};
use axum::{
    extract::Request,
    http::Method,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Extension, Router,
};
use idemq_core::{problem::Problem, queue, queue::JobPayload};
use sqlx::PgPool;

use crate::error::problem_response;

pub fn router(pool: &PgPool) -> Router {
    let mut api = ApiBuilder::new(Router::new());
    for name in queue::ALL {
        let storage = PostgresStorage::<JobPayload>::new(pool).with_config(Config::default().queue(name));
        api = api.register(name, storage);
    }
    let broadcaster = Arc::new(Mutex::new(TracingBroadcaster::new()));
    Router::new()
        .nest("/api/v1", api.build().layer(Extension(broadcaster)))
        .layer(middleware::from_fn(read_only))
        .fallback_service(ServeUI::new())
}

async fn read_only(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // The board's live-log stream: we do not feed it our logs (they stay in
    // our own pipeline), and an endless empty stream keeps browsers busy.
    // 204 tells an EventSource not to reconnect.
    if path == "/api/v1/events" {
        return axum::http::StatusCode::NO_CONTENT.into_response();
    }
    if path.starts_with("/api/v1") && !matches!(*req.method(), Method::GET | Method::HEAD) {
        tracing::warn!(method = %req.method(), path, "ops: refused a write to the board API");
        return problem_response(
            &Problem::new("forbidden", "Forbidden", 403)
                .detail("The dashboard is read-only: jobs enter only through the public API."),
        );
    }
    next.run(req).await
}
