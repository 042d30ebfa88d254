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
    extract::{Id, Key, LimitedBody},
    idempotency::{json_response, submit, Submission},
    schemas::{self, Problem},
    views::OperationView,
    AppState,
};

pub const MARK_PAID: &str = "/invoices/{id}/mark-paid";

/// Mark an invoice paid (UNPAID → PAID under a row lock).
#[utoipa::path(patch, path = "/invoices/{id}/mark-paid", tag = "invoices", operation_id = "markInvoicePaid",
    params(crate::openapi::IdPath, crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body = schemas::MarkPaid,
    responses(
        (status = 202, description = "Accepted (or a replay of an unfinished operation): poll `Location`", body = OperationView, headers(
            ("Location" = String, description = "/operations/{id}"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
            ("RateLimit" = String, description = "Remaining budget (draft-11), when rate limiting is on"),
            ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait")),
            links(("GetOperation" = (operation_id = "getOperation", parameters(("id" = "$response.body#/id")))))),
        (status = 200, description = "Final response (after `Prefer: wait`, or replayed): `{invoice}`", body = crate::openapi::InvoiceBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay"), ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait"))),
        (status = 400, response = crate::openapi::MutationWithIdBadRequest),
        (status = 404, description = "Final response (stored refusal): invoice-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Final response (stored refusal): invoice-already-paid", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = crate::openapi::KeyReused),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable),
    ),
    security(("bearer" = [])))]
pub async fn mark_paid(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
    Key(key): Key,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        kind: OperationKind::InvoiceMarkPaid,
        method: "PATCH",
        route: MARK_PAID,
        params: &[("id", &id)],
    };
    submit(
        &state,
        &principal,
        key,
        &headers,
        submission,
        &body,
        |b: &MarkPaid| require_text("paymentMethod", &b.payment_method, 100),
    )
    .await
}

/// The invoice, for the frontend.
#[utoipa::path(get, path = "/invoices/{id}", tag = "invoices", operation_id = "getInvoice",
    params(crate::openapi::IdPath),
    responses((status = 200, body = crate::openapi::InvoiceBody,
            links(("MarkPaid" = (operation_id = "markInvoicePaid", parameters(("id" = "$response.body#/invoice/id")))))),
        (status = 404, description = "not-found: no such invoice", body = Problem, content_type = "application/problem+json"),
        (status = 400, response = crate::openapi::InvalidPath),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)),
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
