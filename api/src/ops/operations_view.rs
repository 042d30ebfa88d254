//! The operations view: a JSON API and a server-rendered page to find a
//! stuck or failed operation and act on it (retry a failed one, cancel a
//! queued one).
use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Extension, Router,
};
use idemq_core::{
    operation::OperationId,
    ops::{self, ActionResult, Filter, OperationRow},
    problem::Problem,
};
use serde::Deserialize;
use serde_json::json;

use super::{auth::Operator, OpsState};
use crate::{
    error::{problem_response, ApiError},
    idempotency::json_response,
};

pub const PAGE: &str = "/ops/operations";

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route(PAGE, get(page))
        .route("/ops/api/operations", get(list))
        .route("/ops/api/operations/{id}", get(show))
        .route("/ops/api/operations/{id}/retry", post(retry))
        .route("/ops/api/operations/{id}/cancel", post(cancel))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    status: Option<String>,
    kind: Option<String>,
    principal: Option<String>,
    /// Created at least this many seconds ago.
    older_than: Option<i64>,
    limit: Option<i64>,
}

impl ListQuery {
    fn filter(self) -> Filter {
        let some = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
        Filter {
            status: some(self.status),
            kind: some(self.kind),
            principal: some(self.principal),
            older_than_secs: self.older_than,
            limit: self.limit.unwrap_or(100),
        }
    }
}

fn parse_id(id: &str) -> Result<OperationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("There is no operation {id}.")))
}

async fn list(State(s): State<OpsState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let rows = ops::list(&s.pool, &q.filter()).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "operations": rows }).to_string(),
    ))
}

async fn show(State(s): State<OpsState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (operation, job) = ops::show(&s.pool, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no operation {id}.")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "operation": operation, "job": job }).to_string(),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct ActionQuery {
    /// Set by the page's forms: answer with a redirect back to the page.
    redirect: Option<String>,
}

async fn retry(
    State(s): State<OpsState>,
    Extension(who): Extension<Operator>,
    Path(id): Path<String>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, ApiError> {
    let result = ops::retry(&s.pool, parse_id(&id)?, &who.0).await?;
    action_response(&id, "retried", result, q)
}

async fn cancel(
    State(s): State<OpsState>,
    Extension(who): Extension<Operator>,
    Path(id): Path<String>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, ApiError> {
    let result = ops::cancel(&s.pool, parse_id(&id)?, &who.0, s.idempotency_ttl).await?;
    action_response(&id, "cancelled", result, q)
}

fn action_response(id: &str, done: &str, result: ActionResult, q: ActionQuery) -> Result<Response, ApiError> {
    match result {
        ActionResult::Done if q.redirect.is_some() => Ok(Redirect::to(PAGE).into_response()),
        ActionResult::Done => Ok(json_response(
            StatusCode::OK,
            json!({ "id": id, "result": done }).to_string(),
        )),
        ActionResult::NotFound => Err(ApiError::NotFound(format!("There is no operation {id}."))),
        ActionResult::WrongState(status) => Ok(problem_response(
            &Problem::new(
                "operation-wrong-state",
                "The operation is not in a state for this action",
                409,
            )
            .detail(format!(
                "Operation {id} is {status}: only failed ones are retried, queued ones cancelled."
            )),
        )),
    }
}

async fn page(State(s): State<OpsState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let rows = ops::list(&s.pool, &q.filter()).await?;
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>idemq operations</title>\
         <style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.3em .5em;font-size:.9em}th{background:#eee}\
         .failed{color:#a00}.succeeded{color:#070}</style></head><body>\
         <h1>idemq operations</h1><p><a href=\"/\">Queue dashboard</a></p>\
         <form method=\"post\" action=\"/ops/logout\"><button id=\"logout\">Sign out</button></form>\
         <form method=\"get\">status <select name=\"status\"><option value=\"\">any</option>\
         <option>queued</option><option>running</option><option>succeeded</option><option>failed</option></select> \
         kind <input name=\"kind\" size=\"18\"> principal <input name=\"principal\" size=\"10\"> \
         older than (s) <input name=\"olderThan\" size=\"5\"> <button>Filter</button></form><table id=\"operations\">\
         <tr><th>id</th><th>kind</th><th>status</th><th>principal</th><th>key</th><th>attempts</th>\
         <th>created</th><th>response</th><th>actions</th></tr>",
    );
    for r in &rows {
        html.push_str(&row_html(r));
    }
    html.push_str("</table></body></html>");
    let mut response = Html(html).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn row_html(r: &OperationRow) -> String {
    let action = |what: &str| {
        format!(
            "<form method=\"post\" action=\"/ops/api/operations/{}/{what}?redirect=1\"><button>{what}</button></form>",
            esc(&r.id)
        )
    };
    let actions = match r.status.as_str() {
        "failed" => action("retry"),
        "queued" => action("cancel"),
        _ => String::new(),
    };
    format!(
        "<tr><td><a href=\"/ops/api/operations/{id}\">{id}</a></td><td>{kind}</td><td class=\"{status}\">{status}</td>\
         <td>{principal}</td><td>{key}</td><td>{attempts}</td><td>{created}</td><td>{response}</td><td>{actions}</td></tr>",
        id = esc(&r.id),
        kind = esc(&r.kind),
        status = esc(&r.status),
        principal = esc(&r.principal),
        key = esc(&r.idempotency_key),
        attempts = r.attempts,
        created = r.created_at.format("%Y-%m-%d %H:%M:%S"),
        response = r.response_status.map(|s| s.to_string()).unwrap_or_default(),
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
