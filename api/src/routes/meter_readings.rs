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
    extract::{Id, LimitedBody},
    idempotency::{json_response, submit, Submission},
    AppState,
};

pub const RECORD: &str = "/meter-readings";

/// `POST /meter-readings {contractId, reading}`
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

/// `GET /contracts/{id}/meter-readings`
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
