use axum::{extract::State, http::StatusCode, response::Response};
use serde_json::json;

use crate::{error::ApiError, idempotency::json_response, AppState};

/// Liveness only: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "getLiveness",
    responses((status = 200, description = "alive: `{\"status\": \"ok\"}`", content_type = "application/json", body = serde_json::Value)))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }).to_string())
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "getReadiness",
    responses((status = 200, description = "ready: `{\"status\": \"ready\", …}`", content_type = "application/json", body = serde_json::Value),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, description = "service-unavailable: the database is unreachable or migrations are not applied",
            body = crate::schemas::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !idemq_core::db::migrations_current(&state.pool).await? {
        return Err(ApiError::Unavailable("migrations are not applied".into()));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "status": "ready", "database": "ok", "migrations": "current" }).to_string(),
    ))
}
