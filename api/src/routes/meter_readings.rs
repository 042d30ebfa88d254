use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{
    business::meter_readings::{self, RecordReading},
    operation::OperationKind,
    principal::Principal,
};
use serde_json::json;

use super::require_text;
use crate::{
    error::ApiError,
    extract::{Id, Key, LimitedBody},
    idempotency::{json_response, submit, Submission},
    schemas::{self, Problem},
    views::OperationView,
    AppState,
};

pub const RECORD: &str = "/meter-readings";

/// Record a meter reading under the contract's row lock.
#[utoipa::path(post, path = "/meter-readings", tag = "meter readings", operation_id = "recordMeterReading",
    params(crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body = schemas::RecordReading,
    responses(
        (status = 202, description = "Accepted (or a replay of an unfinished operation): poll `Location`", body = OperationView, headers(
            ("Location" = String, description = "/operations/{id}"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
            ("RateLimit" = String, description = "Remaining budget (draft-11), when rate limiting is on"),
            ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait")),
            links(("GetOperation" = (operation_id = "getOperation", parameters(("id" = "$response.body#/id")))))),
        (status = 201, description = "Final response: `{meterReading}`", body = crate::openapi::MeterReadingBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay"), ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait"))),
        (status = 400, response = crate::openapi::MutationBadRequest),
        (status = 404, description = "Final response (stored refusal): contract-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency-key-reused (the key belongs to another request; nothing changed), or the final response (stored refusal) reading-below-last", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable),
    ),
    security(("bearer" = [])))]
pub async fn record(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Key(key): Key,
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
        key,
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
#[utoipa::path(get, path = "/contracts/{id}/meter-readings", tag = "meter readings", operation_id = "listContractMeterReadings",
    params(crate::openapi::IdPath),
    responses((status = 200, body = crate::openapi::MeterReadingList),
        (status = 404, description = "not-found: no such contract", body = Problem, content_type = "application/problem+json"),
        (status = 400, response = crate::openapi::InvalidPath),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)),
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
