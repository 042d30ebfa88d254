use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{
    business::payments::{self, MarkPaid},
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

pub const MARK_PAID: &str = "/invoices/{id}/mark-paid";

/// Mark an invoice paid (UNPAID → PAID under a row lock).
#[utoipa::path(patch, path = "/invoices/{id}/mark-paid", tag = "invoices",
    params(("id" = String, Path, description = "Invoice id"), crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body = MarkPaid,
    responses(
        (status = 202, description = "Accepted (or a replay of an unfinished operation)", body = OperationView, headers(
            ("Location" = String, description = "/operations/{id}"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
            ("RateLimit" = String, description = "Remaining budget (draft-11)"))),
        (status = 200, description = "Final response (after `Prefer: wait`, or replayed): `{invoice}`", body = crate::openapi::InvoiceBody),
        (status = 400, description = "Missing/invalid key or body", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Stored refusal: invoice-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stored refusal: invoice-already-paid", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency-key-reused", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64), ("RateLimit-Policy" = String), ("RateLimit" = String))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("bearer" = [])))]
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

/// The invoice, for the frontend.
#[utoipa::path(get, path = "/invoices/{id}", tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, body = crate::openapi::InvoiceBody),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Response, ApiError> {
    let invoice = payments::find(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no invoice {id}.")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "invoice": invoice }).to_string(),
    ))
}
