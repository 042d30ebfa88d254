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
    AppState,
};

/// `GET /operations/{id}`: the caller's own operations only; honours `Prefer: wait`.
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
        Some(w) => state.waiters.wait_for(&state.pool, &principal, op_id, w).await?,
        None => idempotency::find(&state.pool, &principal, op_id).await?,
    }
    .ok_or_else(not_found)?;
    let mut response = json_response(StatusCode::OK, op.view_json()?);
    if let Some(w) = wait {
        response
            .headers_mut()
            .insert(PREFERENCE_APPLIED, header_value(&format!("wait={}", w.as_secs())));
    }
    Ok(response)
}
