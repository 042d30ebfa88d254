use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{
    business::approvals::{self, Approve, Reject},
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

pub const APPROVE: &str = "/applications/{id}/approve";
pub const REJECT: &str = "/applications/{id}/reject";

/// Approve a pending application; creates its contract in the same transaction.
#[utoipa::path(patch, path = "/applications/{id}/approve", tag = "applications", operation_id = "approveApplication",
    params(crate::openapi::IdPath, crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    // A `ref` makes the body optional without making it nullable (`Option`
    // would allow `null`, which is not an object: 400).
    request_body(content = ref("#/components/schemas/Approve"), content_type = "application/json", description = "`{}`, `{\"note\": \"…\"}` or no body"),
    responses(
        (status = 202, description = "Accepted (or a replay of an unfinished operation): poll `Location`", body = OperationView, headers(
            ("Location" = String, description = "/operations/{id}"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
            ("RateLimit" = String, description = "Remaining budget (draft-11), when rate limiting is on"),
            ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait")),
            links(("GetOperation" = (operation_id = "getOperation", parameters(("id" = "$response.body#/id")))))),
        (status = 200, description = "Final response: `{application, contract}`", body = crate::openapi::ApprovalBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay"), ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait"))),
        (status = 400, response = crate::openapi::MutationWithIdBadRequest),
        (status = 404, description = "Final response (stored refusal): application-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Final response (stored refusal): application-not-pending", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = crate::openapi::KeyReused),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable),
    ),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
    Key(key): Key,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        kind: OperationKind::ApplicationApprove,
        method: "PATCH",
        route: APPROVE,
        params: &[("id", &id)],
    };
    submit(
        &state,
        &principal,
        key,
        &headers,
        submission,
        &body,
        |b: &Approve| match &b.note {
            Some(note) if note.chars().count() > 1000 => Err("note must be at most 1000 characters".into()),
            _ => Ok(()),
        },
    )
    .await
}

/// Reject a pending application.
#[utoipa::path(patch, path = "/applications/{id}/reject", tag = "applications", operation_id = "rejectApplication",
    params(crate::openapi::IdPath, crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body = schemas::Reject,
    responses(
        (status = 202, description = "Accepted (or a replay of an unfinished operation): poll `Location`", body = OperationView, headers(
            ("Location" = String, description = "/operations/{id}"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
            ("RateLimit" = String, description = "Remaining budget (draft-11), when rate limiting is on"),
            ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait")),
            links(("GetOperation" = (operation_id = "getOperation", parameters(("id" = "$response.body#/id")))))),
        (status = 200, description = "Final response: `{application}`", body = crate::openapi::ApplicationBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay"), ("Preference-Applied" = String, description = "`wait=N` when the request asked to wait"))),
        (status = 400, response = crate::openapi::MutationWithIdBadRequest),
        (status = 404, description = "Final response (stored refusal): application-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Final response (stored refusal): application-not-pending", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = crate::openapi::KeyReused),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable),
    ),
    security(("bearer" = [])))]
pub async fn reject(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
    Key(key): Key,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        kind: OperationKind::ApplicationReject,
        method: "PATCH",
        route: REJECT,
        params: &[("id", &id)],
    };
    submit(
        &state,
        &principal,
        key,
        &headers,
        submission,
        &body,
        |b: &Reject| require_text("reason", &b.reason, 1000),
    )
    .await
}

/// The application and its contract, if approved.
#[utoipa::path(get, path = "/applications/{id}", tag = "applications", operation_id = "getApplication",
    params(crate::openapi::IdPath),
    responses((status = 200, body = crate::openapi::ApprovalBody,
            links(
                ("Approve" = (operation_id = "approveApplication", parameters(("id" = "$response.body#/application/id")))),
                ("Reject" = (operation_id = "rejectApplication", parameters(("id" = "$response.body#/application/id")))))),
        (status = 404, description = "not-found: no such application", body = Problem, content_type = "application/problem+json"),
        (status = 400, response = crate::openapi::InvalidPath),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await.map_err(idemq_core::Error::from)?;
    let (application, contract) = approvals::find(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no application {id}.")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "application": application, "contract": contract }).to_string(),
    ))
}
