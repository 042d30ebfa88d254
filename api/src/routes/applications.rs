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
    extract::{Id, LimitedBody},
    idempotency::{json_response, submit, Submission},
    AppState,
};

pub const APPROVE: &str = "/applications/{id}/approve";
pub const REJECT: &str = "/applications/{id}/reject";

/// `PATCH /applications/{id}/approve {note?}`
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

/// `PATCH /applications/{id}/reject {reason}`
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

/// `GET /applications/{id}`: the application and its contract, if approved.
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
