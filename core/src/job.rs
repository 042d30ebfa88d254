//! The job transaction (docs/job-path.md): exactly-once effect on an
//! at-least-once queue.
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::{
    business::{approvals, meter_readings, payments, Actor, Outcome},
    idempotency::FINISHED_CHANNEL,
    notifier::Notifier,
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
/// holds across worker crashes). The worker runs it on its asynchronously
/// committing pool: a Postgres crash may lose the count (README "Durability
/// of each commit"). The same statement opens the attempt's row in
/// `operation_attempts` (by `worker`) and closes an earlier one still open as
/// `abandoned` (its worker died mid-attempt): no extra round trip. `None`:
/// finished already, or gone.
pub async fn start_attempt(pool: &PgPool, op: OperationId, worker: &str) -> Result<Option<Attempt>, Error> {
    let row = sqlx::query!(
        "WITH op AS (
            UPDATE operations SET status = 'running', attempts = attempts + 1, updated_at = now()
            WHERE id = $1 AND status IN ('queued', 'running')
            RETURNING id, attempts, kind
         ), abandoned AS (
            UPDATE operation_attempts SET ended_at = now(), outcome = 'abandoned'
            WHERE operation_id = $1 AND ended_at IS NULL AND EXISTS (SELECT 1 FROM op)
         ), opened AS (
            INSERT INTO operation_attempts (operation_id, attempt, worker)
            SELECT id, attempts, $2 FROM op
         )
         SELECT attempts, kind FROM op",
        op.uuid(),
        worker,
    )
    .fetch_optional(pool)
    .await?
    .map(|row| (row.attempts, row.kind));
    row.map(|(number, kind)| {
        Ok(Attempt {
            operation: op,
            number,
            kind: OperationKind::parse(&kind).ok_or_else(|| Error::Corrupt(format!("kind {kind}")))?,
        })
    })
    .transpose()
}

/// Closes a failed attempt's row with its error, after its transaction rolled
/// back (so on the failure path only). If this write fails too, the next
/// attempt's start closes the row as `abandoned`.
pub async fn record_attempt_error(
    pool: &PgPool,
    op: OperationId,
    attempt: i32,
    error: &str,
) -> Result<(), Error> {
    sqlx::query!(
        "UPDATE operation_attempts SET ended_at = now(), outcome = 'error', error = $3
         WHERE operation_id = $1 AND attempt = $2 AND ended_at IS NULL",
        op.uuid(),
        attempt,
        error,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One attempt: one transaction that locks the operation row (step 1), runs
/// the business operation under its row lock (steps 2–3), stores the final
/// response (step 4) and commits (step 5). Any `Err` has rolled back. If a
/// request waits for the operation, `notifier` announces it after the commit.
///
/// With `limit`, each statement is limited by the server (`SET LOCAL
/// statement_timeout`, lock waits included): the worker's own time limit
/// abandons a hung attempt, and this makes Postgres abandon it too, so that
/// its row locks go at once instead of when the hung statement ends.
pub async fn run_attempt(
    pool: &PgPool,
    op: OperationId,
    ttl: Duration,
    limit: Option<Duration>,
    notifier: &Notifier,
) -> Result<AttemptResult, Error> {
    // The limit travels with BEGIN: one round trip (simple query protocol).
    let mut tx = match limit {
        Some(limit) => {
            let ms = limit.as_millis().clamp(1, i32::MAX as u128);
            pool.begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SET LOCAL statement_timeout = {ms}"
            )))
            .await?
        }
        None => pool.begin().await?,
    };
    let row = sqlx::query!(
        "SELECT status, kind, principal_id, request FROM operations WHERE id = $1 FOR UPDATE",
        op.uuid(),
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| (r.status, r.kind, r.principal_id, r.request));
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
    let finished = finish(&mut tx, op, &outcome, ttl, None).await?;
    tx.commit().await?;
    if let Some(audit) = &outcome.audit {
        audit.log();
    }
    if finished.waited_for {
        notifier.operation_finished(op);
    }
    Ok(AttemptResult::Finished(finished.status))
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
    let status = sqlx::query_scalar!(
        "SELECT status FROM operations WHERE id = $1 FOR UPDATE",
        op.uuid()
    )
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
    finish(&mut tx, op, &outcome, ttl, Some("exhausted"))
        .await?
        .announce_at_commit(&mut tx)
        .await?;
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

/// What `finish` wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    op: OperationId,
    pub status: OperationStatus,
    /// A request waits for this operation (`Prefer: wait` flagged it under
    /// the row lock): it must be told, after the commit.
    pub waited_for: bool,
}

impl Finished {
    /// For the rare finishes (exhausted, cancelled): the notice goes out in
    /// `conn`'s transaction, at its commit. The job path uses `Notifier`
    /// instead, because a notifying commit runs alone (see `notifier`).
    pub async fn announce_at_commit(self, conn: &mut PgConnection) -> Result<(), Error> {
        if self.waited_for {
            sqlx::query!(
                "SELECT pg_notify($1, $2)",
                FINISHED_CHANNEL,
                self.op.uuid().to_string()
            )
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

/// Step 4: the final response, the status and the expiry.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    op: OperationId,
    outcome: &Outcome,
    ttl: Duration,
    attempt_outcome: Option<&str>,
) -> Result<Finished, Error> {
    let status = if outcome.succeeded {
        OperationStatus::Succeeded
    } else {
        OperationStatus::Failed
    };
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let audit = outcome.audit.as_ref();
    // The attempt's outcome: `succeeded`/`refused` for the job's own finish,
    // else the caller's word (`exhausted`, `cancelled`).
    let attempt_outcome = attempt_outcome.unwrap_or(if outcome.succeeded { "succeeded" } else { "refused" });
    // The audit entry (step 3) and the attempt's end ride with the response
    // (step 4): one statement, the same transaction.
    let waited_for = sqlx::query_scalar!(
        "WITH audit AS (
            INSERT INTO audit_log (operation_id, principal_id, action, entity_type, entity_id, details)
            SELECT $1, $7, $8, $9, $10, $11 WHERE $8::text IS NOT NULL
         ), attempt AS (
            UPDATE operation_attempts SET ended_at = now(), outcome = $12
            WHERE operation_id = $1 AND ended_at IS NULL
         )
         UPDATE operations SET status = $2, response_status = $3, response_content_type = $4,
                response_body = $5, finished_at = now(),
                expires_at = now() + $6 * interval '1 millisecond', updated_at = now()
         WHERE id = $1 RETURNING notify_on_finish",
        op.uuid(),
        status.as_str(),
        outcome.status as i16,
        outcome.content_type,
        outcome.body,
        ttl_ms as f64,
        audit.map(|a| a.actor.principal),
        audit.map(|a| a.action),
        audit.map(|a| a.entity_type),
        audit.map(|a| a.entity_id.as_str()),
        audit.map(|a| &a.details),
        attempt_outcome,
    )
    .fetch_optional(conn)
    .await?;
    Ok(Finished {
        op,
        status,
        waited_for: waited_for.unwrap_or(false),
    })
}
