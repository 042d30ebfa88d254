//! What the ops listener does with operations: list and filter them, show
//! one with its job, retry a failed one, cancel a queued one. Every action
//! is audit-logged with who did it.
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    business::{Actor, Audit, Outcome},
    operation::{OperationId, OperationStatus},
    problem::Problem,
    queue, Error,
};

/// Filters of the operations list; all optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Principal name.
    pub principal: Option<String>,
    /// Only operations created at least this many seconds ago.
    pub older_than_secs: Option<i64>,
    /// The idempotency key, exactly.
    pub key: Option<String>,
    /// Keyset paging: only operations older than this one (ids are UUIDv7,
    /// so the primary key orders by creation: no extra index to page
    /// through millions of rows).
    pub before: Option<OperationId>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct OperationRow {
    #[serde(skip)]
    pub uuid: Uuid,
    pub id: String,
    pub principal: String,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub queue: String,
    pub job_id: String,
    pub response_status: Option<i16>,
    pub response_body: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<OperationRow>, Error> {
    // The column list is repeated in `show`: query_as! takes only literals,
    // and checks each copy against `OperationRow`.
    Ok(sqlx::query_as!(
        OperationRow,
        r#"SELECT o.id AS uuid, 'op_' || replace(o.id::text, '-', '') AS "id!", p.name AS principal,
                o.idempotency_key, encode(o.fingerprint, 'hex') AS "fingerprint!", o.kind, o.status,
                o.attempts, o.queue, o.job_id, o.response_status, o.response_body, o.created_at,
                o.updated_at, o.finished_at, o.expires_at
         FROM operations o JOIN principals p ON p.id = o.principal_id
         WHERE ($1::text IS NULL OR o.status = $1) AND ($2::text IS NULL OR o.kind = $2)
           AND ($3::text IS NULL OR p.name = $3)
           AND ($4::bigint IS NULL OR o.created_at <= now() - $4 * interval '1 second')
           AND ($6::text IS NULL OR o.idempotency_key = $6)
           AND ($7::uuid IS NULL OR o.id < $7)
         ORDER BY o.id DESC LIMIT $5"#,
        f.status,
        f.kind,
        f.principal,
        f.older_than_secs,
        f.limit.clamp(1, 1000),
        f.key,
        f.before.map(|id| id.uuid()),
    )
    .fetch_all(pool)
    .await?)
}

/// One operation with its apalis job row (as JSON), if the job still exists.
pub async fn show(pool: &PgPool, id: OperationId) -> Result<Option<(OperationRow, Option<Value>)>, Error> {
    let row = sqlx::query_as!(
        OperationRow,
        r#"SELECT o.id AS uuid, 'op_' || replace(o.id::text, '-', '') AS "id!", p.name AS principal,
                o.idempotency_key, encode(o.fingerprint, 'hex') AS "fingerprint!", o.kind, o.status,
                o.attempts, o.queue, o.job_id, o.response_status, o.response_body, o.created_at,
                o.updated_at, o.finished_at, o.expires_at
         FROM operations o JOIN principals p ON p.id = o.principal_id
         WHERE o.id = $1"#,
        id.uuid(),
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let job: Option<Value> = sqlx::query_scalar!(
        r#"SELECT jsonb_build_object('id', id, 'queue', job_type, 'status', status, 'attempts', attempts,
                'maxAttempts', max_attempts, 'runAt', run_at, 'lockBy', lock_by, 'lockAt', lock_at,
                'doneAt', done_at, 'lastResult', last_result) AS "job!"
         FROM apalis.jobs WHERE id = $1"#,
        row.job_id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(Some((row, job)))
}

/// The stored answers a retry can change: attempts exhausted (500
/// `operation-failed`) and an operator's cancel. A business refusal (409
/// "already paid", 422 ...) would only be refused again.
pub const RETRYABLE_TYPES: [&str; 2] = ["operation-failed", "operation-cancelled"];

/// SQL: `o` (an `operations` row) is finished and its retry can help.
/// (CASE: only a problem body is parsed; SQL does not order AND's operands.)
///
/// The three statements that use it (`lock`, `count_retryable`,
/// `retry_all`) stay dynamic: query! takes only literals, and one shared
/// condition cannot drift between them as three copies could.
const RETRYABLE_SQL: &str = "(o.status = 'failed'
     AND CASE WHEN o.response_content_type LIKE 'application/problem+json%'
              THEN (o.response_body::jsonb ->> 'type') END
         IN ('https://idemq.dev/problems/operation-failed',
             'https://idemq.dev/problems/operation-cancelled'))";

/// Whether a retry of this operation can help (see [`RETRYABLE_TYPES`]).
pub fn retryable(row: &OperationRow) -> bool {
    row.status == OperationStatus::Failed.as_str()
        && row
            .response_body
            .as_deref()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|t| {
                RETRYABLE_TYPES
                    .iter()
                    .any(|slug| t == format!("{}{slug}", crate::problem::TYPE_BASE))
            })
}

/// What the operation page shows besides the row: the request the job
/// runs, the stored response's content type, every attempt (start, end,
/// worker, outcome, error; oldest first) and the audit entries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Story {
    pub request: Value,
    pub response_content_type: Option<String>,
    pub attempts: Vec<Value>,
    pub audit: Vec<Value>,
}

pub async fn story(pool: &PgPool, id: OperationId) -> Result<Story, Error> {
    let (request, response_content_type) = sqlx::query!(
        "SELECT request, response_content_type FROM operations WHERE id = $1",
        id.uuid(),
    )
    .fetch_optional(pool)
    .await?
    .map(|row| (Some(row.request), row.response_content_type))
    .unwrap_or_default();
    let attempts: Vec<Value> = sqlx::query_scalar!(
        r#"SELECT jsonb_build_object('attempt', attempt, 'worker', worker, 'startedAt', started_at,
                'endedAt', ended_at, 'outcome', outcome, 'error', error) AS "attempt!"
         FROM operation_attempts WHERE operation_id = $1 ORDER BY id"#,
        id.uuid(),
    )
    .fetch_all(pool)
    .await?;
    let audit: Vec<Value> = sqlx::query_scalar!(
        r#"SELECT jsonb_build_object('at', at, 'action', action, 'entity', entity_type || ' ' || entity_id,
                'details', details) AS "entry!"
         FROM audit_log WHERE operation_id = $1 ORDER BY id"#,
        id.uuid(),
    )
    .fetch_all(pool)
    .await?;
    Ok(Story {
        request: request.unwrap_or(Value::Null),
        response_content_type,
        attempts,
        audit,
    })
}

/// What an action found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    Done,
    NotFound,
    /// The operation is not in a state the action applies to.
    WrongState(String),
    /// Finished by a refusal a retry would only repeat (its stored status).
    NotRetryable(i16),
}

/// The operation's row, locked for an action: (status, queue, principal,
/// retryable, stored status).
async fn lock(
    conn: &mut PgConnection,
    id: OperationId,
) -> Result<Option<(String, String, Uuid, bool, Option<i16>)>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.status, o.queue, o.principal_id, ({RETRYABLE_SQL}), o.response_status
         FROM operations o WHERE o.id = $1 FOR UPDATE"
    )))
    .bind(id.uuid())
    .fetch_optional(conn)
    .await?)
}

/// The audit entry of an ops action, and its log line.
async fn audit_action(
    conn: &mut PgConnection,
    id: OperationId,
    principal: Uuid,
    action: &'static str,
    who: &str,
) -> Result<(), Error> {
    let actor = Actor {
        operation: id,
        principal,
    };
    let audit = Audit::new(actor, action, "operation", &id.to_string(), json!({ "by": who }));
    audit.insert(conn).await?;
    audit.log();
    tracing::info!(operation = %id, by = who, action, "ops: action done");
    Ok(())
}

/// Retries a `failed` operation that [`retryable`] allows: a new attempt of
/// the same operation (same id, same key) with a new job, in one
/// transaction, audit-logged.
pub async fn retry(pool: &PgPool, id: OperationId, who: &str) -> Result<ActionResult, Error> {
    let mut tx = pool.begin().await?;
    let Some((status, queue_name, principal, can_retry, stored)) = lock(&mut tx, id).await? else {
        return Ok(ActionResult::NotFound);
    };
    if status != OperationStatus::Failed.as_str() {
        return Ok(ActionResult::WrongState(status));
    }
    if !can_retry {
        return Ok(ActionResult::NotRetryable(stored.unwrap_or_default()));
    }
    requeue(&mut tx, id, &queue_name).await?;
    audit_action(&mut tx, id, principal, "operation.retry", who).await?;
    tx.commit().await?;
    Ok(ActionResult::Done)
}

async fn requeue(conn: &mut PgConnection, id: OperationId, queue_name: &str) -> Result<(), Error> {
    let job_id = queue::new_job_id();
    sqlx::query!(
        "UPDATE operations SET status = 'queued', attempts = 0, job_id = $2, response_status = NULL,
                response_content_type = NULL, response_body = NULL, finished_at = NULL,
                expires_at = NULL, updated_at = now()
         WHERE id = $1",
        id.uuid(),
        job_id.to_string(),
    )
    .execute(&mut *conn)
    .await?;
    queue::push(conn, queue_name, job_id, id).await?;
    Ok(())
}

/// How many operations [`retry_all`] would retry: the retryable ones among
/// those the filter selects (its `status` is ignored: only failed ones).
pub async fn count_retryable(pool: &PgPool, f: &Filter) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM operations o JOIN principals p ON p.id = o.principal_id
         WHERE {RETRYABLE_SQL} AND {FILTER_SQL}"
    )))
    .bind(&f.kind)
    .bind(&f.principal)
    .bind(f.older_than_secs)
    .fetch_one(pool)
    .await?)
}

/// The filter's conditions on `o` and `p` ($1 kind, $2 principal, $3 age).
const FILTER_SQL: &str = "($1::text IS NULL OR o.kind = $1) AND ($2::text IS NULL OR p.name = $2)
     AND ($3::bigint IS NULL OR o.created_at <= now() - $3 * interval '1 second')";

/// Retries every retryable operation the filter selects, at most `expect`
/// of them: the count the operator confirmed (more may have failed since;
/// those wait for the next confirmation). Each is audit-logged as a retry;
/// one transaction, so all or none. Returns how many were retried.
pub async fn retry_all(pool: &PgPool, f: &Filter, expect: i64, who: &str) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, String, Uuid)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.id, o.queue, o.principal_id FROM operations o JOIN principals p ON p.id = o.principal_id
         WHERE {RETRYABLE_SQL} AND {FILTER_SQL}
         ORDER BY o.created_at LIMIT $4 FOR UPDATE OF o SKIP LOCKED"
    )))
    .bind(&f.kind)
    .bind(&f.principal)
    .bind(f.older_than_secs)
    .bind(expect.max(0))
    .fetch_all(&mut *tx)
    .await?;
    for (uuid, queue_name, principal) in &rows {
        let id = OperationId::from_uuid(*uuid);
        requeue(&mut tx, id, queue_name).await?;
        audit_action(&mut tx, id, *principal, "operation.retry", who).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as i64)
}

/// Cancels a `queued` operation: finished `failed` with a stored 409
/// "cancelled" response (replayed to the client); its job then finds it
/// finished and changes nothing.
pub async fn cancel(
    pool: &PgPool,
    id: OperationId,
    who: &str,
    ttl: std::time::Duration,
) -> Result<ActionResult, Error> {
    let mut tx = pool.begin().await?;
    let Some((status, _, principal, _, _)) = lock(&mut tx, id).await? else {
        return Ok(ActionResult::NotFound);
    };
    if status != OperationStatus::Queued.as_str() {
        return Ok(ActionResult::WrongState(status));
    }
    let outcome = Outcome::refused(
        Problem::new("operation-cancelled", "The operation was cancelled", 409)
            .detail("An operator cancelled this operation before it ran. Nothing was changed."),
    );
    crate::job::finish(&mut tx, id, &outcome, ttl, Some("cancelled"), None)
        .await?
        .announce_at_commit(&mut tx)
        .await?;
    audit_action(&mut tx, id, principal, "operation.cancel", who).await?;
    tx.commit().await?;
    Ok(ActionResult::Done)
}

/// A paused queue (docs/switches.md, "Pausing a queue").
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct QueuePause {
    pub queue: String,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
}

/// Not one of `queue::ALL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownQueue(pub String);

fn known_queue(name: &str) -> Result<&'static str, UnknownQueue> {
    queue::ALL
        .into_iter()
        .find(|q| *q == name)
        .ok_or_else(|| UnknownQueue(name.to_owned()))
}

/// Pauses `queue`: from their next fetch, no worker of the fleet takes its
/// jobs (jobs already handed to a worker finish). Returns false if it was
/// already paused (nothing changes, nothing is logged).
pub async fn pause_queue(pool: &PgPool, name: &str, who: &str) -> Result<Result<bool, UnknownQueue>, Error> {
    let name = match known_queue(name) {
        Ok(q) => q,
        Err(e) => return Ok(Err(e)),
    };
    let mut tx = pool.begin().await?;
    let paused = sqlx::query!(
        "INSERT INTO queue_pauses (queue, paused_by) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        name,
        who,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if paused {
        log_pause(&mut tx, name, "queue.pause", who).await?;
    }
    tx.commit().await?;
    Ok(Ok(paused))
}

/// Resumes `queue` and wakes its workers at once (as a new job would).
/// Returns false if it was not paused.
pub async fn resume_queue(pool: &PgPool, name: &str, who: &str) -> Result<Result<bool, UnknownQueue>, Error> {
    let name = match known_queue(name) {
        Ok(q) => q,
        Err(e) => return Ok(Err(e)),
    };
    let mut tx = pool.begin().await?;
    let resumed = sqlx::query!("DELETE FROM queue_pauses WHERE queue = $1", name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if resumed {
        log_pause(&mut tx, name, "queue.resume", who).await?;
        sqlx::query!(
            "SELECT pg_notify($1, json_build_object('job_type', $2::text)::text)",
            crate::notifier::JOB_INSERT_CHANNEL,
            name,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Ok(resumed))
}

async fn log_pause(
    conn: &mut PgConnection,
    name: &str,
    action: &'static str,
    who: &str,
) -> Result<(), Error> {
    sqlx::query!(
        "INSERT INTO queue_pause_log (queue, action, by) VALUES ($1, $2, $3)",
        name,
        action,
        who,
    )
    .execute(conn)
    .await?;
    tracing::info!(queue = name, by = who, action, "ops: queue action done");
    Ok(())
}

/// The paused queues.
pub async fn paused_queues(pool: &PgPool) -> Result<Vec<QueuePause>, Error> {
    Ok(sqlx::query_as!(
        QueuePause,
        "SELECT queue, paused_at, paused_by FROM queue_pauses ORDER BY queue"
    )
    .fetch_all(pool)
    .await?)
}
