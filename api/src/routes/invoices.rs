use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{
    business::payments::{self, MarkPaid},
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

pub const MARK_PAID: &str = "/invoices/{id}/mark-paid";

/// `PATCH /invoices/{id}/mark-paid {paymentMethod}`
pub async fn mark_paid(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        kind: OperationKind::InvoiceMarkPaid,
        method: "PATCH",
        route: MARK_PAID,
        params: &[("id", &id)],
    };
    submit(&state, &principal, &headers, submission, &body, |b: &MarkPaid| {
        require_text("paymentMethod", &b.payment_method, 100)
    })
    .await
}

/// `GET /invoices/{id}`
pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Response, ApiError> {
    let invoice = payments::find(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no invoice {id}.")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "invoice": invoice }).to_string(),
    ))
}
