//! The job transaction (docs/job-path.md): exactly-once effect on an
//! at-least-once queue.
use std::{sync::Arc, time::Duration};

use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{pool::PoolConnection, PgConnection, PgPool, Postgres, Row};

use crate::{
    business::{approvals, meter_readings, payments, Actor, Outcome},
    db::Kept,
    finish_notice::FinishNotice,
    idempotency::FINISHED_CHANNEL,
    notifier::Notifier,
    operation::{OperationId, OperationKind, OperationStatus, StoredResponse},
    problem::Problem,
    Error,
};

/// What one attempt found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The effect (or a refusal) was applied and the response stored.
    Finished(OperationStatus, Ack),
    /// The operation was already final: a redelivery. Nothing changed.
    AlreadyFinished,
    /// No such operation (deleted, or a job pushed by hand). Nothing to do.
    Missing,
    /// This attempt is past the bound: the operation was finished `failed`.
    Exhausted(Ack),
}

/// Who acknowledges the queue job that delivered an attempt
/// (docs/job-path.md, "The job transaction").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The job's own transaction marked it `Done`, with the effect: the
    /// queue must not acknowledge it again.
    Committed,
    /// Nothing marked it: the queue acknowledges it as usual.
    ByQueue,
}

/// The apalis job that delivered an attempt, as apalis's acknowledgement
/// would write it: the job transaction that settles the operation marks
/// this row `Done` (`finish`), so that apalis does not have to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueJob {
    /// `apalis.jobs.id` of the delivered job (not necessarily
    /// `operations.job_id`: the reconciler may have enqueued a newer one).
    pub id: String,
    /// The apalis worker that holds it (`apalis.jobs.lock_by`): a job taken
    /// over by another worker after a lease expiry is not marked.
    pub worker: String,
    /// apalis's attempt count for the delivery (`apalis.jobs.attempts`).
    pub attempt: i32,
}

/// The attempt's opening message, sent as the job transaction's `BEGIN`
/// (`open_attempt`): first the attempt's **start** in a transaction of its
/// own, committed asynchronously — the SQL function `start_attempt`
/// (migration `20261202000030_start_attempt.sql`) marks the operation
/// `running`, counts the attempt in `operations.attempts` (so the bound holds
/// across worker crashes: the count is committed before the effect's
/// transaction begins), opens the attempt's row by `{worker}` and closes an
/// earlier one still open as `abandoned` (its worker died mid-attempt) — then
/// the job's own transaction, its statements limited to `{limit_ms}`.
///
/// One simple-query message, so one round trip on the job's own connection:
/// the start used to be a statement of its own on the asynchronous pool (a
/// second connection and a second round trip per attempt). Its result is not
/// read: the job transaction's locking `SELECT` tells the attempt number, and
/// whether the operation is final or gone (then the start changed nothing).
/// The start is a function because a statement of a simple query is parsed
/// and planned on every call; the function's PL/pgSQL keeps its plans.
///
/// Dynamic, not `query!`: a multi-statement message is a simple query, which
/// carries no parameters, so the operation id and the worker name are
/// literals (`{op}`: a formatted `Uuid`; `{worker}`: our own instance name,
/// quoted by `quote_literal`); nothing of a request goes into it. Behind a
/// transaction-mode pooler the checkout's transaction is already open
/// (`db::connect_pooled`): the first `BEGIN` then only warns (silenced), the
/// start joins that transaction, and the `COMMIT` ends it.
const OPEN_ATTEMPT: &str =
    "BEGIN; SET LOCAL synchronous_commit = off; SET LOCAL statement_timeout = {limit_ms};
SELECT start_attempt({op}, {worker});
COMMIT; BEGIN; SET LOCAL statement_timeout = {limit_ms}; {lock}";

/// The opening of an attempt that the worker's fetch already counted
/// ([`Start::Counted`]): only the job's transaction.
const OPEN_COUNTED_ATTEMPT: &str = "BEGIN; SET LOCAL statement_timeout = {limit_ms}; {lock}";

/// Step 1, the last statement of either opening: the operation row locked
/// in the job's transaction, with what the attempt needs (its only row with
/// a `kind` column). In the same message, so that an attempt's first round
/// trip also takes its lock.
const LOCK_OPERATION: &str =
    "SELECT status, kind, principal_id, request, attempts FROM operations WHERE id = {op} FOR UPDATE";

/// Who counts the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The worker's fetch did (`FETCH_STARTING_ATTEMPTS` in
    /// worker/src/fetch_gate.rs), committed before the job
    /// was handed out: the first attempt of a delivery, nearly always.
    Counted,
    /// The attempt's opening message does (`start_attempt`): a retry within
    /// the same delivery, or a job whose operation the fetch did not count
    /// (locked by an attempt in flight, final, or gone).
    Here,
}

/// `s` as an SQL string literal: an escape string (`E'…'`, read the same
/// whatever `standard_conforming_strings` says) with quotes and backslashes
/// doubled. NUL, which no Postgres text holds, is dropped.
fn quote_literal(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 3);
    quoted.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            '\0' => {}
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// A connection of the job pool for one attempt. If the attempt's opening
/// message did not get its answer — it failed (its first transaction then
/// stays aborted on the server, and sqlx, which counts no transaction yet,
/// would not roll it back), or the attempt was abandoned while it waited (a
/// lock, the time limit: the server may then be left inside the job's
/// transaction) — the connection is closed instead of going back to the
/// pool, where the next user would inherit that state.
#[derive(Debug)]
pub struct JobConnection {
    pub(crate) conn: PoolConnection<Postgres>,
    pub(crate) in_doubt: bool,
}

impl JobConnection {
    pub async fn acquire(pool: &PgPool) -> Result<JobConnection, Error> {
        Ok(JobConnection {
            conn: pool.acquire().await?,
            in_doubt: false,
        })
    }
}

/// The job pool, and the connections of attempts that ended cleanly, kept
/// for the next attempt ([`crate::db::Kept`]: no ping on their return).
#[derive(Clone, Debug)]
pub struct JobConnections {
    pool: PgPool,
    kept: Arc<Kept<JobConnection>>,
}

impl JobConnections {
    pub fn new(pool: PgPool) -> JobConnections {
        JobConnections {
            pool,
            kept: Arc::default(),
        }
    }

    /// A kept connection if one is fresh, else one from the pool.
    pub async fn acquire(&self) -> Result<JobConnection, Error> {
        match self.kept.take() {
            Some(conn) => Ok(conn),
            None => JobConnection::acquire(&self.pool).await,
        }
    }

    /// Keeps `conn` for the next attempt if its transaction is known to be
    /// over (one in doubt is dropped, and closed) and no checkout of the
    /// pool may be waiting for it (`db::may_keep`).
    pub fn keep(&self, conn: JobConnection) {
        if !conn.in_doubt && crate::db::may_keep(&self.pool) {
            self.kept.keep(conn);
        }
    }
}

impl JobConnection {
    /// Ends the transaction the opening began with `COMMIT` or `ROLLBACK`;
    /// once the server has answered, the connection is no longer in doubt.
    pub(crate) async fn end(&mut self, how: &'static str) -> Result<(), Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(how))
            .execute(&mut *self.conn)
            .await?;
        self.in_doubt = false;
        Ok(())
    }

    /// Runs `work` in the open transaction and commits it; if `work` fails,
    /// rolls back (if that fails too, the connection stays in doubt and is
    /// closed when dropped).
    pub(crate) async fn within<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match work(&mut self.conn).await {
            Ok(done) => {
                self.end("COMMIT").await?;
                Ok(done)
            }
            Err(e) => {
                let _ = self.end("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

impl Drop for JobConnection {
    fn drop(&mut self) {
        if self.in_doubt {
            self.conn.close_on_drop();
        }
    }
}

/// What the attempt's opening found.
pub enum Opened<'c> {
    /// The attempt is counted and the operation locked: run it, or give up.
    Locked(Locked<'c>),
    /// Already final (a redelivery), or not this delivery's to run: nothing
    /// was counted, nothing changes.
    AlreadyFinished,
    /// No such operation (deleted, or a job pushed by hand).
    Missing,
}

/// An attempt opened by `open_attempt`: counted (committed), its operation
/// row locked in the job's transaction, the operation not final.
pub struct Locked<'c> {
    /// Inside the job's transaction, in doubt until it ends: dropped
    /// without [`Locked::run`] or [`Locked::give_up`] ending it, the
    /// connection is closed and the server rolls back.
    conn: &'c mut JobConnection,
    op: OperationId,
    /// The attempt's number: `operations.attempts` after its start.
    pub number: i32,
    pub kind: OperationKind,
    principal: uuid::Uuid,
    request: Value,
}

/// Opens an attempt on `conn` in one round trip ([`OPEN_ATTEMPT`]): its start
/// committed on its own (asynchronously: a Postgres crash may lose the count,
/// docs/job-path.md "Durability of each commit"; a worker's crash does not),
/// unless the fetch counted it already ([`Start::Counted`]), then the job's
/// transaction (each statement limited by the server to
/// `limit`, lock waits included, so that Postgres drops a hung attempt and
/// its row locks too), which locks the operation row (step 1).
pub async fn open_attempt<'c>(
    conn: &'c mut JobConnection,
    op: OperationId,
    worker: &str,
    limit: Duration,
    start: Start,
) -> Result<Opened<'c>, Error> {
    let ms = limit.as_millis().clamp(1, i32::MAX as u128);
    let template = match start {
        Start::Counted => OPEN_COUNTED_ATTEMPT,
        Start::Here => OPEN_ATTEMPT,
    };
    let opening = template
        .replace("{lock}", LOCK_OPERATION)
        .replace("{limit_ms}", &ms.to_string())
        .replace("{op}", &format!("'{}'::uuid", op.uuid()))
        // Last: nothing in the name is read as a placeholder.
        .replace("{worker}", &quote_literal(worker));
    // In doubt until the transaction is known to be over: a connection
    // dropped in doubt is closed (see `JobConnection`).
    conn.in_doubt = true;
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(opening))
        .fetch_all(&mut *conn.conn)
        .await?;
    let row = rows.iter().rev().find(|r| LockedRow::is_one(r));
    let Some(row) = row else {
        // Nothing to run: rolled back now, the lock released with it.
        conn.end("ROLLBACK").await?;
        return Ok(Opened::Missing);
    };
    let row = LockedRow::read(row)?;
    // The start leaves the operation `running`. Final: the start changed
    // nothing (a redelivery). `queued`: it changed nothing either (the
    // operation was final then, and an operator's retry has since queued it
    // again with a job of its own, which runs it).
    if !row.running {
        conn.end("ROLLBACK").await?;
        return Ok(Opened::AlreadyFinished);
    }
    Ok(Opened::Locked(Locked {
        kind: row.kind()?,
        number: row.attempts,
        principal: row.principal,
        request: row.request,
        conn,
        op,
    }))
}

/// An operation row as step 1's locking read returns it: `LOCK_OPERATION`,
/// and the opening of a group transaction (`job_group`).
pub(crate) struct LockedRow {
    /// Whether the attempt's start left it `running` (else it is final, or
    /// queued again by an operator: not this attempt's to run).
    pub running: bool,
    kind: String,
    pub principal: uuid::Uuid,
    pub request: Value,
    /// `operations.attempts`: the attempt's number.
    pub attempts: i32,
}

impl LockedRow {
    /// Whether `row`, one row of a multi-statement answer, is an operation
    /// row (the message's other statements answer none).
    pub(crate) fn is_one(row: &sqlx::postgres::PgRow) -> bool {
        row.try_column("kind").is_ok()
    }

    pub(crate) fn read(row: &sqlx::postgres::PgRow) -> Result<LockedRow, Error> {
        let status: String = row.try_get("status")?;
        Ok(LockedRow {
            running: OperationStatus::parse(&status) == Some(OperationStatus::Running),
            kind: row.try_get("kind")?,
            principal: row.try_get("principal_id")?,
            request: row.try_get("request")?,
            attempts: row.try_get("attempts")?,
        })
    }

    pub(crate) fn kind(&self) -> Result<OperationKind, Error> {
        OperationKind::parse(&self.kind).ok_or_else(|| Error::Corrupt(format!("kind {}", self.kind)))
    }

    /// The kind as stored, and the entity the request names: the order in
    /// which a group runs its jobs, so that two groups lock business rows in
    /// one order.
    pub(crate) fn lock_order(&self) -> (String, String) {
        let entity = self.request["params"]["id"].as_str().unwrap_or_default();
        (self.kind.clone(), entity.to_owned())
    }
}

impl Locked<'_> {
    /// The stored request (path parameters and body).
    pub fn request(&self) -> &Value {
        &self.request
    }

    /// Runs the attempt: the business operation under its row lock (steps
    /// 2–3), the final response and the delivering `job` marked `Done` (step
    /// 4), the commit (step 5). Any `Err` has rolled back. If a request
    /// waits for the operation, `notifier` announces it after the commit.
    pub async fn run(
        self,
        ttl: Duration,
        notifier: &Notifier,
        job: Option<&QueueJob>,
    ) -> Result<AttemptResult, Error> {
        let actor = Actor {
            operation: self.op,
            principal: self.principal,
        };
        let (outcome, finished) = self
            .conn
            .within(async |conn| {
                let outcome = execute(conn, actor, self.kind, &self.request).await?;
                let finished = finish(conn, self.op, &outcome, ttl, None, job).await?;
                Ok((outcome, finished))
            })
            .await?;
        if let Some(audit) = &outcome.audit {
            audit.log();
        }
        if let Some(notice) = &finished.notice {
            notifier.operation_finished(notice);
        }
        Ok(AttemptResult::Finished(finished.status, finished.ack))
    }

    /// Does not run the attempt (it is past the bound: earlier ones killed
    /// their workers): finishes the operation `failed` with the stored 500 of
    /// [`finish_exhausted`], and marks the delivering `job` `Done`, in this
    /// same transaction, under the lock it already holds. `attempts`: how
    /// many ran.
    pub async fn give_up(
        self,
        attempts: i32,
        ttl: Duration,
        notifier: &Notifier,
        job: Option<&QueueJob>,
    ) -> Result<AttemptResult, Error> {
        let op = self.op;
        let finished = self
            .conn
            .within(async |conn| finish(conn, op, &exhausted(attempts), ttl, Some("exhausted"), job).await)
            .await?;
        if let Some(notice) = &finished.notice {
            notifier.operation_finished(notice);
        }
        Ok(AttemptResult::Exhausted(finished.ack))
    }
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
    finish(&mut tx, op, &exhausted(attempts), ttl, Some("exhausted"), None)
        .await?
        .announce_at_commit(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// The stored 500 of an operation given up after `attempts` attempts.
pub(crate) fn exhausted(attempts: i32) -> Outcome {
    Outcome::refused(
        Problem::new("operation-failed", "The operation could not be completed", 500).detail(format!(
            "Gave up after {attempts} attempts because of internal errors. Nothing was changed; \
             retry with a new Idempotency-Key."
        )),
    )
}

pub(crate) async fn execute(
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

/// A job's statements for `op` (recorded in the caller's transaction, which
/// the caller rolls back): its lock, its effect, its finish. For
/// [`crate::warmup`]: the same statements as an attempt's, so that they are
/// prepared and planned on this connection before a real job needs them.
pub(crate) async fn rehearse(conn: &mut PgConnection, op: OperationId, ttl: Duration) -> Result<(), Error> {
    let lock = LOCK_OPERATION.replace("{op}", &format!("'{}'::uuid", op.uuid()));
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::Corrupt(format!("rehearsal: operation {op} not found")))?;
    let kind: String = row.try_get("kind")?;
    let kind = OperationKind::parse(&kind).ok_or_else(|| Error::Corrupt(format!("kind {kind}")))?;
    let actor = Actor {
        operation: op,
        principal: row.try_get("principal_id")?,
    };
    let request: Value = row.try_get("request")?;
    let outcome = execute(conn, actor, kind, &request).await?;
    finish(conn, op, &outcome, ttl, None, None).await?;
    Ok(())
}

/// What `finish` wrote.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    op: OperationId,
    pub status: OperationStatus,
    /// `Some` if a request waits for this operation (`Prefer: wait` flagged
    /// it under the row lock): what it must be told after the commit, the
    /// finish as this statement wrote it (`finish_notice`).
    pub notice: Option<FinishNotice>,
    /// Whether the delivering job was marked `Done` here.
    pub ack: Ack,
}

impl Finished {
    /// For the rare finishes (exhausted, cancelled): the notice goes out in
    /// `conn`'s transaction, at its commit. The job path uses `Notifier`
    /// instead, because a notifying commit runs alone (see `notifier`).
    pub async fn announce_at_commit(self, conn: &mut PgConnection) -> Result<(), Error> {
        if self.notice.is_some() {
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

/// Step 4: the final response, the status and the expiry; and, given the
/// `job` that delivered the attempt, that job marked `Done` as apalis's
/// acknowledgement would (its status, `done_at`, `last_result`, `attempts`)
/// if this worker still holds it (`lock_by`): same statement, same
/// transaction as the effect, so apalis sends no acknowledgement for it.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    op: OperationId,
    outcome: &Outcome,
    ttl: Duration,
    attempt_outcome: Option<&str>,
    job: Option<&QueueJob>,
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
    // The audit entry (step 3), the attempt's end and the job's completion
    // ride with the response (step 4): one statement, the same transaction.
    // Without a job (`$13` null) the job's update matches no row. Its
    // `last_result` is what apalis stores for a handler's `Ok(())` (its JSON
    // codec's `null` in serde's `Result`). The holder is compared with `IS NOT
    // DISTINCT FROM`, which no index serves, so the job is found by its
    // primary key: with `lock_by = $14` the planner chose the in-flight index
    // (`lock_by`, for `Queued`/`Running`) and read every job the worker holds
    // to find one, up to a fetched batch per finish.
    let row = sqlx::query!(
        r#"WITH audit AS (
            INSERT INTO audit_log (operation_id, principal_id, action, entity_type, entity_id, details)
            SELECT $1, $7, $8, $9, $10, $11 WHERE $8::text IS NOT NULL
         ), attempt AS (
            UPDATE operation_attempts SET ended_at = now(), outcome = $12
            WHERE operation_id = $1 AND ended_at IS NULL
         ), job AS (
            UPDATE apalis.jobs SET status = 'Done', done_at = now(), attempts = $15,
                   last_result = '{"Ok": null}'::jsonb
            WHERE id = $13::text AND lock_by IS NOT DISTINCT FROM $14::text
                  AND status IN ('Queued', 'Running')
            RETURNING 1
         )
         UPDATE operations SET status = $2, response_status = $3, response_content_type = $4,
                response_body = $5, finished_at = now(),
                expires_at = now() + $6 * interval '1 millisecond', updated_at = now()
         WHERE id = $1
         RETURNING notify_on_finish, EXISTS (SELECT FROM job) AS "job_done!", attempts,
                   finished_at AS "finished_at!", expires_at AS "expires_at!""#,
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
        job.map(|j| j.id.as_str()),
        job.map(|j| j.worker.as_str()),
        job.map(|j| j.attempt),
    )
    .fetch_optional(conn)
    .await?;
    let job_done = row.as_ref().is_some_and(|r| r.job_done);
    let notice = row.filter(|r| r.notify_on_finish).map(|r| {
        FinishNotice::new(
            op.uuid(),
            status,
            r.attempts,
            r.finished_at,
            r.expires_at,
            StoredResponse {
                status: outcome.status,
                content_type: outcome.content_type.to_owned(),
                body: outcome.body.clone(),
            },
        )
    });
    Ok(Finished {
        op,
        status,
        notice,
        ack: if job_done { Ack::Committed } else { Ack::ByQueue },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_is_quoted_whatever_it_holds() {
        assert_eq!(quote_literal("queue@host-1-01J"), "E'queue@host-1-01J'");
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(
            quote_literal(r"a\'; DROP TABLE x; --"),
            r"E'a\\''; DROP TABLE x; --'"
        );
        assert_eq!(quote_literal("nul\0here"), "E'nulhere'");
    }
}
