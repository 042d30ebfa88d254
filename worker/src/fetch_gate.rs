//! The queue loop's backend: apalis-postgres's `PostgresStorage` for
//! everything but the fetch, and a fetch of our own that runs only when
//! there is a reason ([`FetchReasons`]: a notice, a full batch, the timer).
//!
//! apalis's `Persisted` backend fetches whenever it is polled with an empty
//! buffer, and the worker polls it after every task handed out and after
//! every job that finishes: at a few jobs in flight most of those fetches
//! came back empty (README "Performance"). Its state is private to
//! apalis-core, so the gate never lets it fetch: it never calls the
//! storage's `poll_next`. The storage still registers the worker, beats its
//! heart and sweeps orphans (its `poll_ready`, driven by apalis as before),
//! and the jobs are apalis's rows, taken by apalis's own `get_jobs`
//! statement: the board, the orphan sweep and the reconciler see what they
//! saw before. The same statement, [`FETCH_STARTING_ATTEMPTS`], also counts
//! the attempt of each job's operation (docs/job-path.md "The job
//! transaction"): one statement a batch, where each job used to start its
//! attempt in a transaction of its own.
//!
//! The acknowledgements are the gate's too ([`crate::ack`]): a job settled
//! by its own transaction is marked `Done` there and needs none; the others
//! are sent with apalis's statement (`handle_results`) when the storage
//! sent them, between batches.
//!
//! The fetch is one statement on its own (no `BEGIN`/`COMMIT` around it:
//! it is atomic by itself), on the queue pool (asynchronous commit). At most
//! one fetch is in flight per queue loop; the jobs it returns are handed out
//! one per free slot. Once the process is stopping it hands out no job and
//! starts no fetch, even before apalis has seen the stop. At shutdown, jobs
//! fetched but not handed out are put back (`reenqueue_abandoned`), also
//! those of a fetch still in flight, and the attempts their fetch counted
//! are given back.
use std::{
    collections::{HashMap, VecDeque},
    str::FromStr,
    task::{Context, Poll},
};

use apalis_core::{
    backend::{Backend, BackendConfig, WireFormatBackend},
    delegate_codec,
    task::{
        builder::TaskBuilder, metadata::MetadataStore, status::Status, task_id::TaskId, task_id::TaskIdError,
    },
    worker::context::WorkerContext,
};
use apalis_postgres::{PgTask, PostgresStorage};
use futures::{future::BoxFuture, FutureExt, Stream};
use idemq_core::{queue::JobPayload, telemetry::QUEUE_FETCHES};
use sqlx::{postgres::types::PgHstore, PgConnection};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::{
    ack::{AckLayer, Pending},
    wake_strategy::{FetchReason, FetchReasons, Wake},
};

type Fetch = BoxFuture<'static, Result<Vec<PgTask>, apalis_postgres::Error>>;
type PutBack = BoxFuture<'static, Result<u64, apalis_postgres::Error>>;
type Acknowledge = BoxFuture<'static, Result<u64, apalis_postgres::Error>>;

pub struct FetchGate<B, S> {
    backend: B,
    reasons: FetchReasons<S>,
    fetch: Option<Fetch>,
    put_back: Option<PutBack>,
    buffer: VecDeque<PgTask>,
    /// The acknowledgements waiting ([`crate::ack`]), and their statement in
    /// flight.
    pending: Pending,
    acknowledge: Option<Acknowledge>,
    /// A fetch or an acknowledgement failed: the loop ends (as with apalis's
    /// own backend).
    dead: bool,
    /// The name the attempts' rows carry (`JobRunner::attempt_name`).
    process: String,
    /// What made the fetch in flight due (`idemq_queue_fetches_total`).
    fetch_reason: FetchReason,
    /// The process is stopping: no job is handed out and no fetch starts.
    /// apalis can learn of the stop a poll later than the jobs in flight,
    /// which hand themselves back at once; a fetch started in between took
    /// such a job again (acknowledged `Failed`, so fetchable) only to put it
    /// back at close.
    stopping: CancellationToken,
}

impl<B, S: Stream<Item = Wake> + Unpin> FetchGate<B, S> {
    pub fn new(backend: B, reasons: FetchReasons<S>, process: String, stopping: CancellationToken) -> Self {
        FetchGate {
            backend,
            reasons,
            fetch: None,
            put_back: None,
            buffer: VecDeque::new(),
            pending: Pending::default(),
            acknowledge: None,
            dead: false,
            process,
            fetch_reason: FetchReason::Start,
            stopping,
        }
    }
}

impl<Args, S: Stream<Item = Wake> + Unpin> FetchGate<PostgresStorage<Args>, S> {
    fn start_fetch(&mut self, worker: &WorkerContext) {
        let pool = self.backend.pool().clone();
        let config = self.backend.config().clone();
        let worker = worker.clone();
        let process = self.process.clone();
        // Only called when a fetch is due: there is a reason.
        self.fetch_reason = self.reasons.fetch_started().unwrap_or(FetchReason::Notice);
        self.fetch = Some(
            async move {
                let mut conn = pool.acquire().await?;
                fetch_starting_attempts(&mut conn, &config, worker.name(), &process).await
            }
            .boxed(),
        );
    }

    /// Polls the fetch in flight into the buffer; `Ready` once none is in
    /// flight.
    fn poll_fetch(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), apalis_postgres::Error>> {
        let Some(fetch) = self.fetch.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = futures::ready!(fetch.poll_unpin(cx));
        self.fetch = None;
        let tasks = result?;
        let queue: &str = self.backend.config().queue.as_ref();
        metrics::counter!(QUEUE_FETCHES,
            "queue" => queue.to_owned(),
            "reason" => self.fetch_reason.as_str(),
            "found" => if tasks.is_empty() { "none" } else { "jobs" })
        .increment(1);
        if tasks.len() >= self.backend.config().batch_size {
            self.reasons.batch_was_full();
        }
        self.buffer.extend(tasks);
        Poll::Ready(Ok(()))
    }

    /// Sends every acknowledgement waiting, in one statement (apalis's
    /// `handle_results`, on its own: no `BEGIN`/`COMMIT` around it), and
    /// waits for it; `Ready` once none is waiting or in flight.
    fn poll_acknowledge(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), apalis_postgres::Error>> {
        loop {
            if let Some(acknowledge) = self.acknowledge.as_mut() {
                let result = futures::ready!(acknowledge.poll_unpin(cx));
                self.acknowledge = None;
                result?;
            }
            let acks = self.pending.take();
            if acks.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let pool = self.backend.pool().clone();
            let worker = worker.name().to_owned();
            self.acknowledge = Some(
                async move {
                    let mut conn = pool.acquire().await?;
                    let acks = acks.iter().collect::<Vec<_>>();
                    apalis_postgres::queries::handle_results(&mut *conn, &acks, &worker).await
                }
                .boxed(),
            );
        }
    }
}

impl<Args, S: Stream<Item = Wake> + Unpin> Backend for FetchGate<PostgresStorage<Args>, S> {
    type Task = PgTask;
    type Error = apalis_postgres::Error;

    /// The storage's own work (registration, heartbeat and orphan sweep)
    /// and the acknowledgements waiting run only between batches: while
    /// jobs wait in the buffer or a fetch is in flight, the worker goes on
    /// handing out jobs and the acknowledgements pile up, to be sent in one
    /// statement before the next fetch. That is when apalis's own backend
    /// ran them (its `poll_ready` works only in its `Ready` state, between a
    /// batch and the next fetch); running them after every job instead cost
    /// an acknowledgement per job and held the next job back during each.
    fn poll_ready(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        if self.dead || !self.buffer.is_empty() || self.fetch.is_some() {
            return Poll::Ready(Ok(()));
        }
        futures::ready!(self.backend.poll_ready(cx, worker))?;
        let acknowledged = futures::ready!(self.poll_acknowledge(cx, worker));
        if let Err(e) = &acknowledged {
            tracing::warn!(error = %e, "acknowledging jobs failed");
            self.dead = true;
        }
        Poll::Ready(acknowledged)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<PgTask, Self::Error>>> {
        if self.dead {
            return Poll::Ready(None);
        }
        if self.stopping.is_cancelled() {
            // No job handed out, no fetch started: apalis's stop wakes the
            // worker, which closes the gate (a fetch in flight and the jobs
            // waiting go back then).
            return Poll::Pending;
        }
        loop {
            if let Some(task) = self.buffer.pop_front() {
                return Poll::Ready(Some(Ok(task)));
            }
            // On every poll, also with a fetch in flight: registers the
            // waker on notices and timer, and keeps a notice drained now
            // due for the next fetch.
            let due = self.reasons.poll_due(cx);
            if self.fetch.is_some() {
                match self.poll_fetch(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => {
                        tracing::warn!(error = %e, "fetching jobs failed");
                        self.dead = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if !due {
                // Parked: a notice or the timer wakes the worker.
                return Poll::Pending;
            }
            self.start_fetch(worker);
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        loop {
            // A fetch in flight may have taken jobs: they go back too.
            futures::ready!(self.poll_fetch(cx))?;
            if let Some(put_back) = self.put_back.as_mut() {
                let result = futures::ready!(put_back.poll_unpin(cx));
                self.put_back = None;
                result?;
            }
            if self.buffer.is_empty() {
                futures::ready!(self.poll_acknowledge(cx, worker))?;
                return self.backend.poll_close(cx, worker);
            }
            let tasks = self.buffer.drain(..).collect::<Vec<_>>();
            let ids = tasks
                .iter()
                .filter_map(|t| t.task_id().map(ToString::to_string))
                .collect::<Vec<_>>();
            let counted = counted_attempts(&tasks);
            let pool = self.backend.pool().clone();
            let queue = self.backend.config().queue.to_string();
            let worker = worker.name().to_owned();
            let process = self.process.clone();
            self.put_back = Some(
                async move {
                    let mut conn = pool.acquire().await?;
                    give_back_attempts(&mut conn, &counted, &process).await?;
                    apalis_postgres::queries::reenqueue_abandoned(&mut *conn, &queue, &worker, &ids).await
                }
                .boxed(),
            );
        }
    }
}

/// The fetch, one statement: up to a batch of jobs taken with apalis's own
/// `get_jobs` statement, word for word (the order, `SKIP LOCKED`, the rows
/// apalis and its board see are apalis's; tests/it/queue_schema.rs compares
/// the two), its limit 0 on a paused queue (`queue_paused`); and, for each
/// job's operation that is neither final nor locked by an attempt in flight
/// (`SKIP LOCKED`: that attempt may finish it, and the fetch must never
/// wait), the attempt counted as `start_attempt` counts it: `running`,
/// `attempts + 1`, the attempt's row opened by this process, an earlier row
/// still open closed as `abandoned`. A job so counted comes back with its
/// payload rewritten to carry the attempt (`{"operationId": …,
/// "startedAttempt": n}`, `JobPayload::started_attempt`); the others come
/// back as stored, and their handler starts the attempt itself. `$1` the
/// apalis worker (queue loop), `$2` the queue, `$3` the batch size, `$4`
/// the name the attempts' rows carry.
///
/// One statement, one snapshot: every job it takes has its operation
/// visible (they commit together). The operation id is read from the
/// payload by `job_operation_id` (a payload that is not ours gives NULL,
/// never an error). The operations are probed by primary key through
/// `= ANY (array)`, whatever the planner thinks of the jobs' count.
/// (Migration `20261207000000_fetch_one_statement.sql` says what this
/// replaced and why.)
pub const FETCH_STARTING_ATTEMPTS: &str = r"WITH jobs AS (
    SELECT id
    FROM apalis.jobs
    WHERE
        (
            status = 'Pending'
            OR (
                status = 'Failed'
                AND attempts < max_attempts
            )
        )
        AND run_at < now()
        AND job_type = $2
    ORDER BY priority DESC, run_at ASC
    LIMIT (CASE WHEN queue_paused($2) THEN 0 ELSE $3 END)
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = $1,
        lock_at = now()
    FROM jobs
    WHERE j.id = jobs.id
    RETURNING j.*, job_operation_id(j.job) AS operation_id
), claimed AS (
    SELECT o.id
    FROM operations o
    WHERE o.id = ANY ((SELECT array_agg(operation_id) FROM taken)::uuid[])
      AND o.status IN ('queued', 'running')
    FOR UPDATE SKIP LOCKED
), started AS (
    UPDATE operations o
    SET status = 'running', attempts = o.attempts + 1, updated_at = now()
    FROM claimed
    WHERE o.id = claimed.id
    RETURNING o.id, o.attempts
), closed AS (
    -- Attempt 1 has no earlier row (an operator's retry restarts the
    -- numbering only on a final operation, whose rows are all closed).
    UPDATE operation_attempts a
    SET ended_at = now(), outcome = 'abandoned'
    FROM started s
    WHERE a.operation_id = s.id AND s.attempts > 1 AND a.ended_at IS NULL
), opened AS (
    INSERT INTO operation_attempts (operation_id, attempt, worker)
    SELECT s.id, s.attempts, $4 FROM started s
)
SELECT CASE WHEN s.attempts IS NULL THEN t.job
            ELSE convert_to(json_build_object('operationId', s.id, 'startedAttempt', s.attempts)::text, 'UTF8')
       END AS job,
       t.id, t.job_type, t.status, t.attempts, t.max_attempts, t.run_at,
       t.lock_at, t.lock_by, t.done_at, t.priority, t.idempotency_key, t.metadata
FROM taken t LEFT JOIN started s ON s.id = t.operation_id";

/// A row of [`FETCH_STARTING_ATTEMPTS`]: apalis's job columns.
#[derive(sqlx::FromRow)]
struct FetchedRow {
    job: Vec<u8>,
    id: String,
    job_type: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    run_at: chrono::DateTime<chrono::Utc>,
    lock_at: Option<chrono::DateTime<chrono::Utc>>,
    lock_by: Option<String>,
    done_at: Option<chrono::DateTime<chrono::Utc>>,
    priority: Option<i32>,
    idempotency_key: Option<String>,
    metadata: Option<PgHstore>,
}

/// One fetch ([`FETCH_STARTING_ATTEMPTS`]); the rows become tasks as
/// apalis's own fetch makes them (`apalis_postgres::from_row`, private to
/// it).
pub async fn fetch_starting_attempts(
    conn: &mut PgConnection,
    config: &apalis_postgres::Config,
    worker: &str,
    process: &str,
) -> Result<Vec<PgTask>, apalis_postgres::Error> {
    let queue: &str = config.queue.as_ref();
    let batch = i32::try_from(config.batch_size).unwrap_or(i32::MAX);
    let rows = sqlx::query_as::<_, FetchedRow>(FETCH_STARTING_ATTEMPTS)
        .bind(worker)
        .bind(queue)
        .bind(batch)
        .bind(process)
        .fetch_all(conn)
        .await?;
    let seconds = |t: chrono::DateTime<chrono::Utc>| u64::try_from(t.timestamp()).unwrap_or(0);
    rows.into_iter()
        .map(|r| {
            let id = Ulid::from_string(&r.id)
                .map_err(|e| apalis_postgres::Error::TaskIdError(TaskIdError::Decode(e.to_string())))?;
            let status = Status::from_str(&r.status).map_err(apalis_postgres::Error::StatusError)?;
            let metadata = r
                .metadata
                .map(|m| {
                    m.into_iter()
                        .filter_map(|(k, v)| Some((k, v?)))
                        .collect::<HashMap<_, _>>()
                })
                .map(MetadataStore::from_map)
                .unwrap_or_default();
            let mut task = TaskBuilder::new(r.job)
                .task_id(TaskId::from_ulid(id))
                .queue(r.job_type.into())
                .status(status)
                .attempt(usize::try_from(r.attempts).unwrap_or(0))
                .max_attempts(usize::try_from(r.max_attempts).unwrap_or(0))
                .run_at_timestamp(seconds(r.run_at))
                .lock_at(r.lock_at.map(seconds))
                .done_at(r.done_at.map(seconds))
                .lock_by(r.lock_by)
                .priority(
                    r.priority
                        .and_then(|p| usize::try_from(p).ok())
                        .unwrap_or_default(),
                )
                .with_metadata(metadata);
            if let Some(key) = r.idempotency_key {
                task = task.idempotency_key(key);
            }
            Ok(task.build())
        })
        .collect()
}

/// The attempts the fetch counted for `tasks` (operation, attempt number).
fn counted_attempts(tasks: &[PgTask]) -> Vec<(uuid::Uuid, i32)> {
    tasks
        .iter()
        .filter_map(|t| serde_json::from_slice::<JobPayload>(&t.args).ok())
        .filter_map(|p| Some((p.operation_id, p.started_attempt?)))
        .collect()
}

/// Jobs fetched but never run go back at a graceful stop: the attempts their
/// fetch counted did not happen, and are taken back (`give_back_attempts`,
/// same migration) before the jobs are put back.
async fn give_back_attempts(
    conn: &mut PgConnection,
    counted: &[(uuid::Uuid, i32)],
    process: &str,
) -> Result<(), apalis_postgres::Error> {
    if counted.is_empty() {
        return Ok(());
    }
    let (operations, attempts): (Vec<_>, Vec<_>) = counted.iter().copied().unzip();
    sqlx::query!(
        "SELECT give_back_attempts($1, $2, $3)",
        &operations,
        &attempts,
        process
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// The storage's configuration, with the gate's acknowledgements
/// ([`AckLayer`]) instead of the storage's middleware, which would
/// acknowledge every job (so the storage's own event channel stays empty).
/// Its middleware does nothing else here: it locks jobs only with
/// `lock_tasks`, which is off (`crate::queue_config`).
impl<Args, S> BackendConfig for FetchGate<PostgresStorage<Args>, S> {
    type Id = <PostgresStorage<Args> as BackendConfig>::Id;
    type Args = Args;
    type Kind = <PostgresStorage<Args> as BackendConfig>::Kind;
    type Config = apalis_postgres::Config;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        self.backend.config()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> AckLayer {
        AckLayer::new(self.pending.clone(), self.backend.config().persist_results)
    }
}

delegate_codec!(FetchGate<B, S>, backend);
