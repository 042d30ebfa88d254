use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{
    business::meter_readings::{self, RecordReading},
    operation::OperationKind,
    operation::OperationView,
    principal::Principal,
    problem::Problem,
};
use serde_json::json;

use super::require_text;
use crate::{
    error::ApiError,
    extract::{Id, LimitedBody},
    idempotency::{json_response, submit, Submission},
    AppState,
};

pub const RECORD: &str = "/meter-readings";

/// Record a meter reading under the contract's row lock.
#[utoipa::path(post, path = "/meter-readings", tag = "meter readings",
    params(crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body = RecordReading,
    responses(
        (status = 202, body = OperationView, headers(("Location" = String), ("Idempotent-Replayed" = String))),
        (status = 201, description = "Final response: `{meterReading}`", body = crate::openapi::MeterReadingBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Stored refusal: contract-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency-key-reused, or stored refusal reading-below-last", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn record(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        kind: OperationKind::MeterReadingRecord,
        method: "POST",
        route: RECORD,
        params: &[],
    };
    submit(
        &state,
        &principal,
        &headers,
        submission,
        &body,
        |b: &RecordReading| {
            require_text("contractId", &b.contract_id, 200)?;
            b.validate().map_err(str::to_owned)
        },
    )
    .await
}

/// A contract's meter readings, oldest first.
#[utoipa::path(get, path = "/contracts/{id}/meter-readings", tag = "meter readings",
    params(("id" = String, Path, description = "Contract id")),
    responses((status = 200, body = crate::openapi::MeterReadingList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Id(id): Id) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await.map_err(idemq_core::Error::from)?;
    let readings = meter_readings::list(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no contract {id}.")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "contractId": id, "meterReadings": readings }).to_string(),
    ))
}
