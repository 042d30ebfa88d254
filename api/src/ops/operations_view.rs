//! The operations view: a JSON API and server-rendered pages to find a
//! stuck or failed operation, read its story and act on it: retry one whose
//! attempts ran out or that was cancelled (a business refusal would only be
//! refused again), retry all such by filter after confirming their count,
//! cancel a queued one. Every action is audit-logged with the operator.
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
/// Rows a page shows unless `limit` says otherwise.
pub const PAGE_SIZE: i64 = 50;

/// The first page refreshes itself: every 5 s it fetches itself again and
/// swaps in the tables, unless the operator is typing in a filter field.
const LIVE_SCRIPT: &str = "<script>setInterval(async()=>{const a=document.activeElement;\
if(a&&(a.tagName==='INPUT'||a.tagName==='SELECT'))return;\
try{const r=await fetch(location.href,{credentials:'same-origin'});if(!r.ok)return;\
const d=new DOMParser().parseFromString(await r.text(),'text/html');\
for(const id of ['operations','queues']){const n=d.getElementById(id),o=document.getElementById(id);\
if(n&&o)o.replaceWith(n);}}catch(e){}},5000);</script>";

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route(PAGE, get(page))
        .route("/ops/operations/retry-all", get(confirm_retry_all))
        .route("/ops/operations/{id}", get(operation_page))
        .route("/ops/api/operations", get(list))
        .route("/ops/api/operations/retry-all", post(retry_all))
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
    /// Created at least this many seconds ago (text: the page's form sends
    /// an empty field).
    older_than: Option<String>,
    key: Option<String>,
    /// Keyset paging: the last id of the previous page.
    before: Option<String>,
    limit: Option<i64>,
}

impl ListQuery {
    fn filter(&self) -> Result<Filter, ApiError> {
        let some = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
        Ok(Filter {
            status: some(&self.status),
            kind: some(&self.kind),
            principal: some(&self.principal),
            older_than_secs: older_than(self.older_than.as_deref())?,
            key: some(&self.key),
            before: match some(&self.before) {
                None => None,
                Some(id) => {
                    Some(id.parse().map_err(|_| {
                        ApiError::InvalidPath(format!("before is an operation id, not {id:?}."))
                    })?)
                }
            },
            limit: self.limit.unwrap_or(PAGE_SIZE),
        })
    }
}

fn parse_id(id: &str) -> Result<OperationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("There is no operation {id}.")))
}

async fn list(State(s): State<OpsState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let rows = ops::list(&s.pool, &q.filter()?).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "operations": rows }).to_string(),
    ))
}

async fn show(State(s): State<OpsState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let op_id = parse_id(&id)?;
    let (operation, job) = ops::show(&s.pool, op_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no operation {id}.")))?;
    let story = ops::story(&s.pool, op_id).await?;
    let retryable = ops::retryable(&operation);
    Ok(json_response(
        StatusCode::OK,
        json!({ "operation": operation, "job": job, "story": story, "retryable": retryable }).to_string(),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct ActionQuery {
    /// Set by the page's forms: answer with a redirect back to the page.
    redirect: Option<String>,
}

impl ActionQuery {
    pub fn is_redirect(&self) -> bool {
        self.redirect.is_some()
    }
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
        ActionResult::NotRetryable(stored) => Ok(problem_response(
            &Problem::new(
                "operation-not-retryable",
                "A retry of this operation would be refused again",
                409,
            )
            .detail(format!(
                "Operation {id} was refused ({stored}) by a business rule, not by exhausted attempts or a cancel: \
                 a retry would only repeat that answer."
            )),
        )),
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryAllForm {
    kind: Option<String>,
    principal: Option<String>,
    older_than: Option<String>,
    /// The count the operator confirmed: at most this many are retried.
    expect: i64,
    redirect: Option<String>,
}

impl RetryAllForm {
    fn filter(&self) -> Result<Filter, ApiError> {
        let q = ListQuery {
            kind: self.kind.clone(),
            principal: self.principal.clone(),
            older_than: self.older_than.clone(),
            ..ListQuery::default()
        };
        q.filter()
    }
}

fn older_than(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            ApiError::InvalidPath(format!("olderThan is a whole number of seconds, not {t:?}."))
        }),
    }
}

/// The confirmation of a bulk retry: how many operations it would retry.
async fn confirm_retry_all(
    State(s): State<OpsState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (kind, principal, age) = (
        q.kind.clone().unwrap_or_default(),
        q.principal.clone().unwrap_or_default(),
        q.older_than.clone().unwrap_or_default(),
    );
    let n = ops::count_retryable(&s.pool, &q.filter()?).await?;
    let mut html = head("Retry operations");
    html.push_str(&format!(
        "<h1>Retry operations</h1><p id=\"count\"><strong>{n}</strong> operation(s) finished by exhausted attempts \
         or a cancel match (kind: {k}, principal: {p}, older than: {a} s). Each is run again under its key; \
         refused ones (a business 409/422) are not retried.</p>\
         <form method=\"post\" action=\"/ops/api/operations/retry-all\">\
         <input type=\"hidden\" name=\"kind\" value=\"{k}\"><input type=\"hidden\" name=\"principal\" value=\"{p}\">\
         <input type=\"hidden\" name=\"olderThan\" value=\"{a}\"><input type=\"hidden\" name=\"expect\" value=\"{n}\">\
         <input type=\"hidden\" name=\"redirect\" value=\"1\">\
         <button id=\"confirm\">Retry {n} operation(s)</button> <a href=\"{PAGE}\">Back</a></form></body></html>",
        k = esc(&kind),
        p = esc(&principal),
        a = esc(&age),
    ));
    Ok(no_store(Html(html).into_response()))
}

async fn retry_all(
    State(s): State<OpsState>,
    Extension(who): Extension<Operator>,
    axum::Form(form): axum::Form<RetryAllForm>,
) -> Result<Response, ApiError> {
    let n = ops::retry_all(&s.pool, &form.filter()?, form.expect, &who.0).await?;
    if form.redirect.is_some() {
        return Ok(Redirect::to(PAGE).into_response());
    }
    Ok(json_response(StatusCode::OK, json!({ "retried": n }).to_string()))
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\
         <style>body{{font-family:sans-serif;margin:1em;max-width:1400px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .5em;font-size:.9em;vertical-align:top;text-align:left}}\
         th{{background:#eee}}.failed{{color:#a00}}.succeeded{{color:#070}}\
         pre{{white-space:pre-wrap;word-break:break-all;background:#f6f6f6;padding:.5em;margin:0}}\
         .scroll{{overflow-x:auto}}form{{display:inline}}</style></head><body>",
        esc(title)
    )
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/ops/operations/{id}`: the operation's story as far as it is recorded.
async fn operation_page(State(s): State<OpsState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let op_id = parse_id(&id)?;
    let (r, job) = ops::show(&s.pool, op_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("There is no operation {id}.")))?;
    let story = ops::story(&s.pool, op_id).await?;
    let pretty = |v: &serde_json::Value| esc(&serde_json::to_string_pretty(v).unwrap_or_default());
    let mut html = head(&format!("Operation {}", r.id));
    let row = |name: &str, value: String| format!("<tr><th>{name}</th><td>{value}</td></tr>");
    html.push_str(&format!(
        "<p><a href=\"{PAGE}\">All operations</a> · <a href=\"/\">Queue dashboard</a></p>\
         <h1>Operation <code>{}</code></h1><div class=\"scroll\"><table id=\"operation\">",
        esc(&r.id)
    ));
    for (name, value) in [
        ("kind", esc(&r.kind)),
        (
            "status",
            format!("<span class=\"{0}\">{0}</span>", esc(&r.status)),
        ),
        ("principal", esc(&r.principal)),
        (
            "idempotency key",
            format!("<code>{}</code>", esc(&r.idempotency_key)),
        ),
        ("fingerprint", format!("<code>{}</code>", esc(&r.fingerprint))),
        ("attempts", r.attempts.to_string()),
        ("queue", esc(&r.queue)),
        ("created", r.created_at.to_rfc3339()),
        ("updated", r.updated_at.to_rfc3339()),
        (
            "finished",
            r.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ),
        (
            "expires",
            r.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ),
    ] {
        html.push_str(&row(name, value));
    }
    html.push_str("</table></div><h2>Actions</h2><p id=\"actions\">");
    let action = |what: &str| {
        format!(
            "<form method=\"post\" action=\"/ops/api/operations/{}/{what}?redirect=1\"><button id=\"{what}\">{what}</button></form>",
            esc(&r.id)
        )
    };
    match r.status.as_str() {
        "failed" if ops::retryable(&r) => html.push_str(&action("retry")),
        "queued" => html.push_str(&action("cancel")),
        "failed" => html.push_str("None: refused by a business rule; a retry would be refused again."),
        _ => html.push_str("None in this state."),
    }
    html.push_str(&format!(
        "</p><h2>Request</h2><pre id=\"request\">{}</pre>",
        pretty(&story.request)
    ));
    html.push_str(&format!(
        "<h2>Job</h2><p>apalis row <code>{}</code>: its current state (apalis keeps no history of states).</p><pre id=\"job\">{}</pre>",
        esc(&r.job_id),
        job.as_ref().map(pretty).unwrap_or_else(|| "(gone: removed by cleanup)".into())
    ));
    let response = match (r.response_status, &r.response_body) {
        (Some(status), Some(body)) => {
            let body = serde_json::from_str::<serde_json::Value>(body)
                .map(|v| pretty(&v))
                .unwrap_or_else(|_| esc(body));
            format!(
                "{status} {}\n\n{body}",
                esc(story.response_content_type.as_deref().unwrap_or_default())
            )
        }
        _ => "(none yet)".into(),
    };
    html.push_str(&format!(
        "<h2>Stored response</h2><pre id=\"response\">{response}</pre>"
    ));
    html.push_str("<h2>Attempts</h2><div class=\"scroll\"><table id=\"attempts\"><tr><th>#</th><th>worker</th><th>started</th><th>ended</th><th>outcome</th><th>error</th></tr>");
    for a in &story.attempts {
        let text = |k: &str| esc(a.get(k).and_then(|v| v.as_str()).unwrap_or_default());
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            a.get("attempt").map(|n| n.to_string()).unwrap_or_default(),
            text("worker"),
            text("startedAt"),
            text("endedAt"),
            text("outcome"),
            text("error")
        ));
    }
    html.push_str("</table></div>");
    html.push_str("<h2>Audit</h2><div class=\"scroll\"><table id=\"audit\"><tr><th>at</th><th>action</th><th>entity</th><th>details</th></tr>");
    for entry in &story.audit {
        let text = |k: &str| esc(entry.get(k).and_then(|v| v.as_str()).unwrap_or_default());
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            text("at"),
            text("action"),
            text("entity"),
            esc(&entry.get("details").map(|d| d.to_string()).unwrap_or_default())
        ));
    }
    html.push_str("</table></div></body></html>");
    Ok(no_store(Html(html).into_response()))
}

async fn page(State(s): State<OpsState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let rows = ops::list(&s.pool, &q.filter()?).await?;
    let paused = ops::paused_queues(&s.pool).await?;
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or_default());
    let selected = |status: &str| {
        let on = q.status.as_deref() == Some(status);
        format!("<option{}>{status}</option>", if on { " selected" } else { "" })
    };
    let mut html = head("idemq operations");
    // The queues first: a paused one is the first thing on-call must see.
    html.push_str("<h1>idemq operations</h1><h2>Queues</h2>");
    html.push_str(&queues_html(&paused));
    html.push_str(&format!(
        "<h2>Operations</h2><p><a href=\"/\">Queue dashboard</a> \
         <form method=\"post\" action=\"/ops/logout\"><button id=\"logout\">Sign out</button></form></p>\
         <form method=\"get\">status <select name=\"status\"><option value=\"\">any</option>\
         {}{}{}{}</select> \
         kind <input name=\"kind\" size=\"18\" value=\"{}\"> principal <input name=\"principal\" size=\"10\" value=\"{}\"> \
         older than (s) <input name=\"olderThan\" size=\"5\" value=\"{}\"> \
         key <input name=\"key\" size=\"12\" value=\"{}\"> <button>Filter</button></form> \
         <form method=\"get\" action=\"/ops/operations/retry-all\">\
         <input type=\"hidden\" name=\"kind\" value=\"{4}\"><input type=\"hidden\" name=\"principal\" value=\"{5}\">\
         <input type=\"hidden\" name=\"olderThan\" value=\"{6}\"><button id=\"retry-all\">Retry all retryable…</button></form>\
         <div class=\"scroll\"><table id=\"operations\">\
         <tr><th>id</th><th>kind</th><th>status</th><th>principal</th><th>key</th><th>attempts</th>\
         <th>created</th><th>response</th><th>actions</th></tr>",
        selected("queued"),
        selected("running"),
        selected("succeeded"),
        selected("failed"),
        value(&q.kind),
        value(&q.principal),
        value(&q.older_than),
        value(&q.key),
    ));
    for r in &rows {
        html.push_str(&row_html(r));
    }
    html.push_str("</table></div>");
    let limit = q.limit.unwrap_or(PAGE_SIZE);
    match rows.last() {
        Some(last) if rows.len() as i64 >= limit => {
            let mut next = format!("{PAGE}?before={}", last.id);
            for (name, v) in [
                ("status", &q.status),
                ("kind", &q.kind),
                ("principal", &q.principal),
                ("olderThan", &q.older_than),
                ("key", &q.key),
            ] {
                if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                    next.push_str(&format!("&{name}={}", url_encode(v)));
                }
            }
            if q.limit.is_some() {
                next.push_str(&format!("&limit={limit}"));
            }
            html.push_str(&format!(
                "<p><a id=\"next\" href=\"{}\">Older →</a></p>",
                esc(&next)
            ));
        }
        _ => html.push_str("<p>End of the list.</p>"),
    }
    if q.before.is_none() {
        html.push_str(LIVE_SCRIPT);
    }
    html.push_str("</body></html>");
    Ok(no_store(Html(html).into_response()))
}

/// Each queue, paused or running, with the switch that applies.
fn queues_html(paused: &[ops::QueuePause]) -> String {
    let mut html = String::from(
        "<div class=\"scroll\"><table id=\"queues\"><tr><th>queue</th><th>state</th><th>action</th></tr>",
    );
    for queue in idemq_core::queue::ALL {
        let (state, action) = match paused.iter().find(|p| p.queue == queue) {
            Some(p) => (
                format!(
                    "<span class=\"failed\">paused</span> since {} by {}",
                    p.paused_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    esc(&p.paused_by)
                ),
                "resume",
            ),
            None => ("running".to_owned(), "pause"),
        };
        html.push_str(&format!(
            "<tr><td>{queue}</td><td id=\"queue-{queue}\">{state}</td><td><form method=\"post\" \
             action=\"/ops/api/queues/{queue}/{action}?redirect=1\"><button id=\"{action}-{queue}\">{action}</button>\
             </form></td></tr>"
        ));
    }
    html.push_str("</table></div><p>A paused queue keeps accepting requests; no worker takes its jobs until it is resumed.</p>");
    html
}

fn row_html(r: &OperationRow) -> String {
    let action = |what: &str| {
        format!(
            "<form method=\"post\" action=\"/ops/api/operations/{}/{what}?redirect=1\"><button>{what}</button></form>",
            esc(&r.id)
        )
    };
    let actions = match r.status.as_str() {
        "failed" if ops::retryable(r) => action("retry"),
        "queued" => action("cancel"),
        _ => String::new(),
    };
    format!(
        "<tr><td><a href=\"/ops/operations/{id}\">{id}</a></td><td>{kind}</td><td class=\"{status}\">{status}</td>\
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

/// Percent-encodes a query parameter's value: everything but RFC 3986's
/// unreserved characters.
fn url_encode(s: &str) -> String {
    const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
