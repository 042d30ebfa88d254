use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{idempotency, operation::OperationId, principal::Principal};

use crate::{
    error::ApiError,
    extract::Id,
    idempotency::{header_value, json_response, prefer_wait, PREFERENCE_APPLIED},
    schemas::Problem,
    views::{self, OperationView},
    AppState,
};

/// Poll an operation (the caller's own only); honours `Prefer: wait`.
#[utoipa::path(get, path = "/operations/{id}", tag = "operations", operation_id = "getOperation",
    params(crate::openapi::IdPath, crate::openapi::PreferHeader),
    responses((status = 200, body = OperationView, headers(("Preference-Applied" = String, description = "wait=N when honoured"))),
        (status = 404, description = "not-found: unknown, another principal's, or expired and deleted", body = Problem, content_type = "application/problem+json"),
        (status = 400, response = crate::openapi::InvalidPath),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("There is no operation {id}."));
    let op_id: OperationId = id.parse().map_err(|_| not_found())?;
    let wait = prefer_wait(&headers);
    let op = match wait {
        Some(w) => {
            state
                .waiters
                .wait_for(&state.pool, &principal, op_id, w, None)
                .await?
        }
        None => idempotency::find(&state.pool, &principal, op_id).await?,
    }
    .ok_or_else(not_found)?;
    let mut response = json_response(StatusCode::OK, views::operation_json(&op)?);
    if let Some(w) = wait {
        response
            .headers_mut()
            .insert(PREFERENCE_APPLIED, header_value(&format!("wait={}", w.as_secs())));
    }
    Ok(response)
}
