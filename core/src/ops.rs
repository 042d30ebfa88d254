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

const SELECT: &str = "SELECT o.id AS uuid, 'op_' || replace(o.id::text, '-', '') AS id, p.name AS principal,
        o.idempotency_key, encode(o.fingerprint, 'hex') AS fingerprint, o.kind, o.status, o.attempts,
        o.queue, o.job_id, o.response_status, o.response_body, o.created_at, o.updated_at,
        o.finished_at, o.expires_at
    FROM operations o JOIN principals p ON p.id = o.principal_id";

pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<OperationRow>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT}
         WHERE ($1::text IS NULL OR o.status = $1) AND ($2::text IS NULL OR o.kind = $2)
           AND ($3::text IS NULL OR p.name = $3)
           AND ($4::bigint IS NULL OR o.created_at <= now() - $4 * interval '1 second')
         ORDER BY o.created_at DESC LIMIT $5"
    )))
    .bind(&f.status)
    .bind(&f.kind)
    .bind(&f.principal)
    .bind(f.older_than_secs)
    .bind(f.limit.clamp(1, 1000))
    .fetch_all(pool)
    .await?)
}

/// One operation with its apalis job row (as JSON), if the job still exists.
pub async fn show(pool: &PgPool, id: OperationId) -> Result<Option<(OperationRow, Option<Value>)>, Error> {
    let row: Option<OperationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE o.id = $1")))
        .bind(id.uuid())
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let job: Option<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', id, 'queue', job_type, 'status', status, 'attempts', attempts,
                'maxAttempts', max_attempts, 'runAt', run_at, 'lockBy', lock_by, 'lockAt', lock_at,
                'doneAt', done_at, 'lastResult', last_result)
         FROM apalis.jobs WHERE id = $1",
    )
    .bind(&row.job_id)
    .fetch_optional(pool)
    .await?;
    Ok(Some((row, job)))
}

/// What an action found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    Done,
    NotFound,
    /// The operation is not in a state the action applies to.
    WrongState(String),
}

/// The operation's row, locked for an action: (status, queue, principal).
async fn lock(conn: &mut PgConnection, id: OperationId) -> Result<Option<(String, String, Uuid)>, Error> {
    Ok(
        sqlx::query_as("SELECT status, queue, principal_id FROM operations WHERE id = $1 FOR UPDATE")
            .bind(id.uuid())
            .fetch_optional(conn)
            .await?,
    )
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

/// Retries a `failed` operation: a new attempt of the same operation (same
/// id, same key) with a new job, in one transaction, audit-logged.
pub async fn retry(pool: &PgPool, id: OperationId, who: &str) -> Result<ActionResult, Error> {
    let mut tx = pool.begin().await?;
    let Some((status, queue_name, principal)) = lock(&mut tx, id).await? else {
        return Ok(ActionResult::NotFound);
    };
    if status != OperationStatus::Failed.as_str() {
        return Ok(ActionResult::WrongState(status));
    }
    let job_id = queue::new_job_id();
    sqlx::query(
        "UPDATE operations SET status = 'queued', attempts = 0, job_id = $2, response_status = NULL,
                response_content_type = NULL, response_body = NULL, finished_at = NULL,
                expires_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id.uuid())
    .bind(job_id.to_string())
    .execute(&mut *tx)
    .await?;
    queue::push(&mut tx, &queue_name, job_id, id).await?;
    audit_action(&mut tx, id, principal, "operation.retry", who).await?;
    tx.commit().await?;
    Ok(ActionResult::Done)
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
    let Some((status, _, principal)) = lock(&mut tx, id).await? else {
        return Ok(ActionResult::NotFound);
    };
    if status != OperationStatus::Queued.as_str() {
        return Ok(ActionResult::WrongState(status));
    }
    let outcome = Outcome::refused(
        Problem::new("operation-cancelled", "The operation was cancelled", 409)
            .detail("An operator cancelled this operation before it ran. Nothing was changed."),
    );
    crate::job::finish(&mut tx, id, &outcome, ttl)
        .await?
        .announce_at_commit(&mut tx)
        .await?;
    audit_action(&mut tx, id, principal, "operation.cancel", who).await?;
    tx.commit().await?;
    Ok(ActionResult::Done)
}
