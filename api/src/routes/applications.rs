use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    Extension,
};
use idemq_core::{
    business::approvals::{self, Approve, Reject},
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

pub const APPROVE: &str = "/applications/{id}/approve";
pub const REJECT: &str = "/applications/{id}/reject";

/// Approve a pending application; creates its contract in the same transaction.
#[utoipa::path(patch, path = "/applications/{id}/approve", tag = "applications",
    params(("id" = String, Path, description = "Application id"), crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body(content = Approve, description = "`{}` or `{\"note\": \"…\"}`"),
    responses(
        (status = 202, body = OperationView, headers(("Location" = String), ("Idempotent-Replayed" = String))),
        (status = 200, description = "Final response: `{application, contract}`", body = crate::openapi::ApprovalBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Stored refusal: application-not-found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stored refusal: application-not-pending", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
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
#[utoipa::path(patch, path = "/applications/{id}/reject", tag = "applications",
    params(("id" = String, Path, description = "Application id"), crate::openapi::IdempotencyKeyHeader, crate::openapi::PreferHeader),
    request_body = Reject,
    responses(
        (status = 202, body = OperationView, headers(("Location" = String), ("Idempotent-Replayed" = String))),
        (status = 200, description = "Final response: `{application}`", body = crate::openapi::ApplicationBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn reject(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Id(id): Id,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        kind: OperationKind::ApplicationReject,
        method: "PATCH",
        route: REJECT,
        params: &[("id", &id)],
    };
    submit(&state, &principal, &headers, submission, &body, |b: &Reject| {
        require_text("reason", &b.reason, 1000)
    })
    .await
}

/// The application and its contract, if approved.
#[utoipa::path(get, path = "/applications/{id}", tag = "applications",
    params(("id" = String, Path, description = "Application id")),
    responses((status = 200, body = crate::openapi::ApprovalBody),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json")),
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
