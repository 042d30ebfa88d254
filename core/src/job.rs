//! The job transaction (DESIGN.md "The job path"): exactly-once effect on an
//! at-least-once queue.
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    business::{approvals, meter_readings, payments, Actor, Outcome},
    idempotency::FINISHED_CHANNEL,
    operation::{OperationId, OperationKind, OperationStatus},
    problem::Problem,
    Error,
};

/// What one attempt found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The effect (or a refusal) was applied and the response stored.
    Finished(OperationStatus),
    /// The operation was already final: a redelivery. Nothing changed.
    AlreadyFinished,
    /// No such operation (deleted, or a job pushed by hand). Nothing to do.
    Missing,
    /// This attempt is past the bound: the operation was finished `failed`.
    Exhausted,
}

/// An attempt about to run, as `start_attempt` recorded it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub operation: OperationId,
    pub number: i32,
    pub kind: OperationKind,
}

/// Marks the operation `running` and counts the attempt, committed on its own
/// so that a worker killed mid-job still leaves the count behind (the bound
/// holds across crashes). `None`: finished already, or gone.
pub async fn start_attempt(pool: &PgPool, op: OperationId) -> Result<Option<Attempt>, Error> {
    let row: Option<(i32, String)> = sqlx::query_as(
        "UPDATE operations SET status = 'running', attempts = attempts + 1, updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING attempts, kind",
    )
    .bind(op.uuid())
    .fetch_optional(pool)
    .await?;
    row.map(|(number, kind)| {
        Ok(Attempt {
            operation: op,
            number,
            kind: OperationKind::parse(&kind).ok_or_else(|| Error::Corrupt(format!("kind {kind}")))?,
        })
    })
    .transpose()
}

/// One attempt: one transaction that locks the operation row (step 1), runs
/// the business operation under its row lock (steps 2–3), stores the final
/// response (step 4) and commits (step 5). Any `Err` has rolled back.
pub async fn run_attempt(pool: &PgPool, op: OperationId, ttl: Duration) -> Result<AttemptResult, Error> {
    run_attempt_within(pool, op, ttl, None).await
}

/// `run_attempt` with each statement limited to `limit` by the server
/// (`SET LOCAL statement_timeout`, lock waits included). The worker's own
/// time limit abandons a hung attempt; this makes Postgres abandon it too,
/// so that its row locks go at once instead of when the hung statement ends.
pub async fn run_attempt_within(
    pool: &PgPool,
    op: OperationId,
    ttl: Duration,
    limit: Option<Duration>,
) -> Result<AttemptResult, Error> {
    let mut tx = pool.begin().await?;
    if let Some(limit) = limit {
        let ms = limit.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL statement_timeout = {ms}")))
            .execute(&mut *tx)
            .await?;
    }
    let row: Option<(String, String, Uuid, Value)> =
        sqlx::query_as("SELECT status, kind, principal_id, request FROM operations WHERE id = $1 FOR UPDATE")
            .bind(op.uuid())
            .fetch_optional(&mut *tx)
            .await?;
    let Some((status, kind, principal, request)) = row else {
        return Ok(AttemptResult::Missing);
    };
    if OperationStatus::parse(&status).is_none_or(OperationStatus::is_final) {
        return Ok(AttemptResult::AlreadyFinished);
    }
    let kind = OperationKind::parse(&kind).ok_or_else(|| Error::Corrupt(format!("kind {kind}")))?;
    let actor = Actor {
        operation: op,
        principal,
    };
    let outcome = execute(&mut tx, actor, kind, &request).await?;
    let status = finish(&mut tx, op, &outcome, ttl).await?;
    tx.commit().await?;
    Ok(AttemptResult::Finished(status))
}

/// Finishes the operation `failed` with a stored 500-class problem after its
/// last attempt. Does nothing if it finished meanwhile.
pub async fn finish_exhausted(
    pool: &PgPool,
    op: OperationId,
    attempts: i32,
    ttl: Duration,
) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM operations WHERE id = $1 FOR UPDATE")
        .bind(op.uuid())
        .fetch_optional(&mut *tx)
        .await?;
    if status
        .as_deref()
        .and_then(OperationStatus::parse)
        .is_none_or(OperationStatus::is_final)
    {
        return Ok(false);
    }
    let outcome = Outcome::refused(
        Problem::new("operation-failed", "The operation could not be completed", 500).detail(format!(
            "Gave up after {attempts} attempts because of internal errors. Nothing was changed; \
             retry with a new Idempotency-Key."
        )),
    );
    finish(&mut tx, op, &outcome, ttl).await?;
    tx.commit().await?;
    Ok(true)
}

async fn execute(
    conn: &mut PgConnection,
    actor: Actor,
    kind: OperationKind,
    request: &Value,
) -> Result<Outcome, Error> {
    let param = |name: &str| -> Result<String, Error> {
        request["params"][name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Corrupt(format!("request of {} lacks param {name}", actor.operation)))
    };
    match kind {
        OperationKind::InvoiceMarkPaid => {
            payments::mark_paid(conn, actor, &param("id")?, &body(actor, request)?).await
        }
        OperationKind::ApplicationApprove => {
            approvals::approve(conn, actor, &param("id")?, &body(actor, request)?).await
        }
        OperationKind::ApplicationReject => {
            approvals::reject(conn, actor, &param("id")?, &body(actor, request)?).await
        }
        OperationKind::MeterReadingRecord => {
            meter_readings::record(conn, actor, &body(actor, request)?).await
        }
    }
}

fn body<T: DeserializeOwned>(actor: Actor, request: &Value) -> Result<T, Error> {
    serde_json::from_value(request["body"].clone())
        .map_err(|e| Error::Corrupt(format!("stored body of {}: {e}", actor.operation)))
}

/// Step 4: the final response, the status, the expiry, and — only if a
/// request waits for it — the completion notice (delivered at commit).
pub(crate) async fn finish(
    conn: &mut PgConnection,
    op: OperationId,
    outcome: &Outcome,
    ttl: Duration,
) -> Result<OperationStatus, Error> {
    let status = if outcome.succeeded {
        OperationStatus::Succeeded
    } else {
        OperationStatus::Failed
    };
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    sqlx::query(
        "WITH done AS (
            UPDATE operations SET status = $2, response_status = $3, response_content_type = $4,
                   response_body = $5, finished_at = now(),
                   expires_at = now() + $6 * interval '1 millisecond', updated_at = now()
            WHERE id = $1 RETURNING id, notify_on_finish)
         SELECT pg_notify($7, id::text) FROM done WHERE notify_on_finish",
    )
    .bind(op.uuid())
    .bind(status.as_str())
    .bind(outcome.status as i16)
    .bind(outcome.content_type)
    .bind(&outcome.body)
    .bind(ttl_ms as f64)
    .bind(FINISHED_CHANNEL)
    .execute(conn)
    .await?;
    Ok(status)
}
