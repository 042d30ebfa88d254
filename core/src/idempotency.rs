//! The idempotency record store: record the request and enqueue its job in
//! one transaction, or find what an earlier request with the key started.
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::{
    db,
    fingerprint::Fingerprint,
    key::IdempotencyKey,
    operation::{Operation, OperationId, OperationKind, COLUMNS},
    principal::Principal,
    queue, Error,
};

/// What the request path does next.
#[derive(Debug)]
pub enum NextAction {
    /// A new operation was recorded and its job enqueued.
    Started(Operation),
    /// The key was used before with the same request: answer with this one.
    Existing(Operation),
    /// The key was used before with a different request: 422.
    KeyReused(Operation),
}

/// What a new operation needs.
pub struct NewOperation<'a> {
    /// The id it gets if it is new (chosen first, so that a waiting request
    /// can listen for it before it exists).
    pub id: OperationId,
    /// A request waits for it (`Prefer: wait`): its finish is announced
    /// (see `watch`), flagged in the same statement that records it.
    pub announce_finish: bool,
    pub principal: &'a Principal,
    pub key: &'a IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub kind: OperationKind,
    /// Path parameters and validated body, for the job.
    pub request: &'a Value,
}

/// Steps 6 and 7 of the request path, in one statement in the common
/// cases: it records the operation (`INSERT … ON CONFLICT DO NOTHING`) and,
/// only if that inserted it, its job (a data-modifying CTE: both or neither,
/// one round trip, no BEGIN/COMMIT); if the key was taken, the same statement
/// returns the existing record. A concurrent first request with the same key
/// blocks on the unique index until the winner commits; its statement's
/// snapshot predates that row, so it returns nothing and the record is read
/// again. An expired record counts as absent: it is deleted and the insert
/// tried again.
///
/// The statements that return an [`Operation`] stay dynamic: they share
/// `COLUMNS` with `Operation`'s one `FromRow` (which parses kind and status
/// into their enums), and `INSERT_JOB` mirrors apalis's push; query! takes
/// only literals, and copies in each statement could drift apart.
pub async fn begin(pool: &PgPool, new: NewOperation<'_>) -> Result<NextAction, Error> {
    begin_on(&mut *pool.acquire().await?, new).await
}

/// [`begin`] on a connection of the caller's (the API keeps its
/// connections between requests: `db::KeptPool`). Every statement is one
/// of its own, outside any transaction: when it returns, `conn` is idle.
pub async fn begin_on(conn: &mut PgConnection, new: NewOperation<'_>) -> Result<NextAction, Error> {
    use sqlx::{FromRow, Row};
    // Two rounds at most: the second follows the removal of an expired record.
    for _ in 0..2 {
        let id = new.id;
        let job_id = queue::new_job_id();
        let queue_name = new.kind.queue();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH op AS (
                INSERT INTO operations
                    (id, principal_id, idempotency_key, fingerprint, kind, request, queue, job_id, notify_on_finish)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $11)
                ON CONFLICT (principal_id, idempotency_key) DO NOTHING
                RETURNING {COLUMNS}
             ), job AS ({INSERT_JOB} FROM (SELECT job_id, queue, $9::bytea AS job FROM op) new_job)
             SELECT {COLUMNS}, true AS inserted, false AS expired FROM op
             UNION ALL
             SELECT {COLUMNS}, false, coalesce(expires_at <= now(), false) FROM operations
             WHERE principal_id = $2 AND idempotency_key = $3 AND NOT EXISTS (SELECT 1 FROM op)"
        )))
        .bind(id.uuid())
        .bind(new.principal.id())
        .bind(new.key.as_str())
        .bind(&new.fingerprint.as_bytes()[..])
        .bind(new.kind.as_str())
        .bind(new.request)
        .bind(queue_name)
        .bind(job_id.to_string())
        .bind(queue::job_args(id)?)
        .bind(queue::APALIS_MAX_ATTEMPTS as i32)
        .bind(new.announce_finish)
        .fetch_optional(&mut *conn)
        .await?;
        let existing = match row {
            Some(row) if row.try_get::<bool, _>("inserted")? => {
                return Ok(NextAction::Started(Operation::from_row(&row)?));
            }
            Some(row) => Some((Operation::from_row(&row)?, row.try_get::<bool, _>("expired")?)),
            None => read_existing(&mut *conn, &new).await?,
        };
        match existing {
            Some((op, false)) => {
                return Ok(taken(op, new.fingerprint));
            }
            // Expiry is judged by the database clock, in SQL.
            Some((op, true)) => {
                sqlx::query!(
                    "DELETE FROM operations WHERE id = $1 AND expires_at <= now()",
                    op.id.uuid()
                )
                .execute(&mut *conn)
                .await?;
            }
            // Deleted by cleanup meanwhile: insert again.
            None => {}
        }
    }
    Err(Error::Corrupt(format!(
        "idempotency record for key {} could not be settled",
        new.key
    )))
}

/// Records several requests' operations, each with its job, in one
/// statement and one commit: the request path's group commit
/// (`api::record_batch`). Each request is still recorded with its job in
/// one transaction, both or neither; the transaction is shared.
///
/// Returns, for each of `new` in order, what [`begin_on`] would have:
/// `Started` if this statement inserted it, `Existing` or `KeyReused` if its
/// key was taken before the statement began (a repeat). `None` leaves the
/// rest to [`begin_on`], one by one: a key under an expired record, one
/// taken by a request not yet committed, a key twice in the batch.
///
/// The rows are inserted in the order of their keys, so two batches that
/// share keys wait on each other in one order and cannot deadlock.
pub async fn record_batch(
    conn: &mut PgConnection,
    new: &[NewOperation<'_>],
) -> Result<Vec<Option<NextAction>>, Error> {
    use sqlx::{FromRow, Row};
    let n = new.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (new[i].principal.id(), new[i].key.as_str()));
    let mut columns = BatchColumns::with_capacity(n);
    for &i in &order {
        columns.push(&new[i])?;
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::text[], $6::jsonb[],
                                 $7::text[], $8::text[], $9::bytea[], $11::bool[])
                AS t(id, principal_id, idempotency_key, fingerprint, kind, request, queue, job_id, job, notify_on_finish)
         ), op AS (
            INSERT INTO operations
                (id, principal_id, idempotency_key, fingerprint, kind, request, queue, job_id, notify_on_finish)
            SELECT id, principal_id, idempotency_key, fingerprint, kind, request, queue, job_id, notify_on_finish
            FROM input
            ON CONFLICT (principal_id, idempotency_key) DO NOTHING
            RETURNING {COLUMNS}
         ), job AS (
            {INSERT_JOB}
            FROM (SELECT input.job_id, input.queue, input.job FROM op JOIN input ON input.id = op.id) new_job
         )
         SELECT {COLUMNS}, true AS inserted, false AS expired FROM op
         UNION ALL
         SELECT {COLUMNS}, false, expired FROM (
            SELECT o.*, coalesce(o.expires_at <= now(), false) AS expired
            FROM input i JOIN operations o
              ON o.principal_id = i.principal_id AND o.idempotency_key = i.idempotency_key
            WHERE NOT EXISTS (SELECT 1 FROM op
                              WHERE op.principal_id = i.principal_id AND op.idempotency_key = i.idempotency_key)
         ) found"
    )))
    .bind(&columns.ids)
    .bind(&columns.principals)
    .bind(&columns.keys)
    .bind(&columns.fingerprints)
    .bind(&columns.kinds)
    .bind(&columns.requests)
    .bind(&columns.queues)
    .bind(&columns.job_ids)
    .bind(&columns.jobs)
    .bind(queue::APALIS_MAX_ATTEMPTS as i32)
    .bind(&columns.announce)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<Option<NextAction>> = (0..n).map(|_| None).collect();
    for row in &rows {
        let op = Operation::from_row(row)?;
        if row.try_get::<bool, _>("inserted")? {
            if let Some(i) = new.iter().position(|o| o.id == op.id) {
                out[i] = Some(NextAction::Started(op));
            }
            continue;
        }
        if row.try_get::<bool, _>("expired")? {
            continue;
        }
        // A key twice in the batch is found twice only if it was taken before.
        for (i, o) in new.iter().enumerate() {
            if out[i].is_none() && o.principal.id() == op.principal_id && o.key.as_str() == op.key {
                out[i] = Some(taken(op.clone(), o.fingerprint));
            }
        }
    }
    Ok(out)
}

/// What a request whose key was taken by `op` gets: the same request
/// (fingerprint) is a repeat, another one reuses the key.
fn taken(op: Operation, fingerprint: Fingerprint) -> NextAction {
    if op.fingerprint == fingerprint {
        NextAction::Existing(op)
    } else {
        NextAction::KeyReused(op)
    }
}

/// A batch as one array per column, for `unnest`.
struct BatchColumns<'a> {
    ids: Vec<uuid::Uuid>,
    principals: Vec<uuid::Uuid>,
    keys: Vec<&'a str>,
    fingerprints: Vec<&'a [u8]>,
    kinds: Vec<&'static str>,
    requests: Vec<&'a Value>,
    queues: Vec<&'static str>,
    job_ids: Vec<String>,
    jobs: Vec<Vec<u8>>,
    announce: Vec<bool>,
}

impl<'a> BatchColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        BatchColumns {
            ids: Vec::with_capacity(n),
            principals: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            fingerprints: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            requests: Vec::with_capacity(n),
            queues: Vec::with_capacity(n),
            job_ids: Vec::with_capacity(n),
            jobs: Vec::with_capacity(n),
            announce: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, op: &'a NewOperation<'a>) -> Result<(), Error> {
        self.ids.push(op.id.uuid());
        self.principals.push(op.principal.id());
        self.keys.push(op.key.as_str());
        self.fingerprints.push(&op.fingerprint.as_bytes()[..]);
        self.kinds.push(op.kind.as_str());
        self.requests.push(op.request);
        self.queues.push(op.kind.queue());
        self.job_ids.push(queue::new_job_id().to_string());
        self.jobs.push(queue::job_args(op.id)?);
        self.announce.push(op.announce_finish);
        Ok(())
    }
}

/// The record under the key and whether it has expired (a fresh snapshot:
/// sees a concurrent first request's row once it committed).
async fn read_existing(
    conn: &mut PgConnection,
    new: &NewOperation<'_>,
) -> Result<Option<(Operation, bool)>, Error> {
    use sqlx::{FromRow, Row};
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, coalesce(expires_at <= now(), false) AS expired
         FROM operations WHERE principal_id = $1 AND idempotency_key = $2"
    )))
    .bind(new.principal.id())
    .bind(new.key.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(row) => Some((Operation::from_row(&row)?, row.try_get("expired")?)),
        None => None,
    })
}

/// For a request about to wait: flags the operation so that its finish is
/// announced on `FINISHED_CHANNEL`, and returns it — or, if it is already
/// final (or not this principal's), what `find` returns. The flag is set under
/// the row lock, so a job finishing concurrently either sees it and notifies,
/// or committed first and the operation is returned final. The flag is
/// committed before this returns (behind a pooler too: `db::commit_checkout`).
pub async fn watch(
    pool: &PgPool,
    principal: &Principal,
    id: OperationId,
) -> Result<Option<Operation>, Error> {
    let mut conn = pool.acquire().await?;
    let flagged: Option<Operation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE operations SET notify_on_finish = true
         WHERE id = $1 AND principal_id IS NOT DISTINCT FROM $2 AND status IN ('queued', 'running')
         RETURNING {COLUMNS}"
    )))
    .bind(id.uuid())
    .bind(principal.id())
    .fetch_optional(&mut *conn)
    .await?;
    db::commit_checkout(pool, &mut conn).await?;
    drop(conn);
    match flagged {
        Some(op) => Ok(Some(op)),
        None => find(pool, principal, id).await,
    }
}

/// An operation of this principal (another principal's id is not found).
///
/// The principal is compared with `IS NOT DISTINCT FROM` (the same test for
/// a `NOT NULL` column), not `=`, here and in [`watch`], so that the primary
/// key is the only index the planner can use. With `=`, a generic plan
/// built while `operations` is small (a fleet's first requests) scans the
/// unique `(principal_id, idempotency_key)` index by principal: every
/// operation of the principal, on every later call of that connection. The
/// latency bench caught it at 1,040 buffers and 1 ms a read.
pub async fn find<'e>(
    db: impl sqlx::PgExecutor<'e>,
    principal: &Principal,
    id: OperationId,
) -> Result<Option<Operation>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM operations WHERE id = $1 AND principal_id IS NOT DISTINCT FROM $2"
    )))
    .bind(id.uuid())
    .bind(principal.id())
    .fetch_optional(db)
    .await?)
}

/// The apalis job row, as `apalis_postgres::queries::push_tasks` writes it
/// (same columns and defaults: Pending, no attempts, run now, priority 0,
/// empty metadata), selected from the inserted operations so that it exists
/// exactly when its operation does: completed by `FROM` a relation
/// `new_job(job_id, queue, job)` (the job id a ULID, the queue, the JSON
/// payload); `$10` is the max attempts. The schema is apalis
/// 1.0's, pinned in Cargo.lock; the tests would catch a drift.
const INSERT_JOB: &str = "INSERT INTO apalis.jobs
        (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
    SELECT job_id, queue, job, 'Pending', 0, $10, now(), 0, ''::hstore, NULL";

/// Postgres channel on which a finished operation's id is announced (sent in
/// the job's transaction, so delivered at commit) for `Prefer: wait`.
pub const FINISHED_CHANNEL: &str = "idemq_operation_finished";
