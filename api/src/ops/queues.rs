//! Pausing and resuming a queue from the ops listener (docs/switches.md,
//! "Pausing a queue"). The API keeps accepting; workers fleet-wide stop fetching the
//! queue's jobs from their next fetch; each action is logged with the
//! operator (`queue_pause_log`).
use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Extension, Router,
};
use idemq_core::ops;
use serde_json::json;

use super::{auth::Operator, operations_view::ActionQuery, OpsState};
use crate::{error::ApiError, idempotency::json_response};

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/ops/api/queues", get(list))
        .route("/ops/api/queues/{queue}/pause", post(pause))
        .route("/ops/api/queues/{queue}/resume", post(resume))
        .with_state(state)
}

async fn list(State(s): State<OpsState>) -> Result<Response, ApiError> {
    let paused = ops::paused_queues(&s.pool).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "queues": idemq_core::queue::ALL, "paused": paused }).to_string(),
    ))
}

async fn pause(
    State(s): State<OpsState>,
    Extension(who): Extension<Operator>,
    Path(queue): Path<String>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, ApiError> {
    let changed = ops::pause_queue(&s.pool, &queue, &who.0).await?;
    answer(&queue, true, changed, &q)
}

async fn resume(
    State(s): State<OpsState>,
    Extension(who): Extension<Operator>,
    Path(queue): Path<String>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, ApiError> {
    let changed = ops::resume_queue(&s.pool, &queue, &who.0).await?;
    answer(&queue, false, changed, &q)
}

fn answer(
    queue: &str,
    paused: bool,
    changed: Result<bool, ops::UnknownQueue>,
    q: &ActionQuery,
) -> Result<Response, ApiError> {
    let changed = changed.map_err(|e| ApiError::NotFound(format!("There is no queue {:?}.", e.0)))?;
    if q.is_redirect() {
        return Ok(Redirect::to(super::operations_view::PAGE).into_response());
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "queue": queue, "paused": paused, "changed": changed }).to_string(),
    ))
}
