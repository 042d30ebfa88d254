use axum::{extract::State, http::StatusCode, response::Response};
use serde_json::json;

use crate::{error::ApiError, idempotency::json_response, AppState};

/// Liveness only: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }).to_string())
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"),
    (status = 503, body = idemq_core::problem::Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !idemq_core::db::migrations_current(&state.pool).await? {
        return Err(ApiError::Unavailable("migrations are not applied".into()));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "status": "ready", "database": "ok", "migrations": "current" }).to_string(),
    ))
}
