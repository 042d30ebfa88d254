//! Runs one job: the operation's attempts, each one transaction, each under a
//! time limit and isolated from panics, retried with exponential backoff and
//! jitter up to `IDEMQ_JOB_MAX_ATTEMPTS`, then finished `failed` with a
//! stored 500. Retries happen here, not in apalis: apalis re-fetches a failed
//! job at once (no backoff), and its `.timeout()`/`.catch_panic()` leave jobs
//! stuck `Running`.
//!
//! When the process is stopping, a job waiting for its next attempt does not
//! wait: it hands the job back to the queue (apalis marks it `Failed`, and a
//! live worker takes it at once), so that a graceful stop finishes only the
//! attempts in flight. The attempt count lives in `operations.attempts`, so
//! the bound holds whoever takes the job next.
use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId, WorkerContext};
use idemq_core::{
    job::{self, Ack, AttemptResult, JobConnections, Opened, QueueJob, Start},
    job_group::Settled,
    notifier::Notifier,
    operation::OperationStatus,
    operation::{OperationId, OperationKind},
    queue::JobPayload,
    telemetry::{JOBS, JOB_DURATION},
    Error,
};
use rand::Rng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    faults::Faults,
    job_groups::{Failure, GroupContext, GroupReply, JobGroups},
    WorkerSettings,
};

pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct JobRunner {
    pool: PgPool,
    /// The job pool's connections for the attempts (`job::JobConnections`).
    connections: JobConnections,
    /// Commits without waiting for the WAL flush, for the writes that carry
    /// no effect (a failed attempt's error, apalis's fetch, ack and
    /// heartbeat): `idemq_core::db::connect_async_commit`. The attempt count
    /// commits asynchronously too, but on the job's own connection, in the
    /// message that opens its transaction (`job::open_attempt`).
    queue_pool: PgPool,
    notifier: Notifier,
    ttl: Duration,
    max_attempts: u32,
    timeout: Duration,
    faults: Faults,
    stopping: CancellationToken,
    /// This process's instance name, written on each attempt's row.
    worker: String,
    /// Group transactions at once (`IDEMQ_WORKER_JOB_GROUPS`); 0: none.
    job_groups: usize,
    /// The grouping task, started with the first job (once the faults and
    /// the name are set).
    groups: OnceLock<Option<JobGroups>>,
}

/// Why a job goes back to apalis unfinished (apalis then marks it `Failed`
/// and hands it to a worker again; our attempt bound still holds).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database unreachable: {0}")]
    Database(#[from] Error),
    #[error("attempt could not be started: {0}")]
    NotStarted(String),
    #[error("worker stopping: job handed back to the queue")]
    Stopping,
}

/// The apalis handler. Returns `Ok` whenever the operation is settled (done,
/// refused, or finished `failed`), so apalis never re-runs it by itself:
/// `Ack::Committed` if the job transaction that settled it also marked this
/// job `Done` (then no acknowledgement is sent, `crate::ack`), else
/// `Ack::ByQueue`.
pub async fn handle_job(
    job: JobPayload,
    runner: Data<Arc<JobRunner>>,
    task_id: TaskId,
    attempt: Attempt,
    worker: WorkerContext,
) -> Result<Ack, BoxDynError> {
    let op = job.operation_id();
    let span = tracing::info_span!("job", operation = %op);
    // The fetch counted this delivery's first attempt, or it did not.
    let start = match job.started_attempt {
        Some(_) => Start::Counted,
        None => Start::Here,
    };
    // The row apalis's acknowledgement would write: this delivery's job,
    // held by this queue loop, with the attempt apalis counted when it
    // handed the job out (shared with apalis's lifecycle layer).
    let delivered = QueueJob {
        id: task_id.to_string(),
        worker: worker.name().to_owned(),
        attempt: i32::try_from(attempt.current()).unwrap_or(i32::MAX),
    };
    runner
        .run(op, start, Some(&delivered))
        .instrument(span)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "job handed back to the queue");
            Box::new(e) as BoxDynError
        })
}

/// Exponential backoff with full jitter: a random delay up to
/// `BACKOFF_BASE × 2^(attempt-1)`, capped, so that retries of many jobs that
/// failed together (a database restart) do not come back together.
pub fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(BACKOFF_CAP);
    let ms = rand::rng().random_range(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

impl JobRunner {
    pub fn new(pool: PgPool, settings: &WorkerSettings) -> Self {
        // Lazily connected: apalis's loops (one connection each at a time)
        // and the attempts' errors use as many as they need.
        let queue_pool = idemq_core::db::connect_async_commit(&pool, pool.options().get_max_connections());
        JobRunner {
            notifier: Notifier::spawn(pool.clone()),
            queue_pool,
            connections: JobConnections::new(pool.clone()),
            pool,
            ttl: settings.idempotency_ttl,
            max_attempts: settings.config.job_max_attempts,
            timeout: settings.config.job_timeout,
            faults: Faults::default(),
            stopping: CancellationToken::new(),
            worker: crate::instance_name(),
            job_groups: settings.config.job_groups as usize,
            groups: OnceLock::new(),
        }
    }

    /// The grouping task, if groups are on.
    fn groups(&self) -> Option<&JobGroups> {
        self.groups
            .get_or_init(|| {
                let context = GroupContext {
                    connections: self.connections.clone(),
                    notifier: self.notifier.clone(),
                    ttl: self.ttl,
                    timeout: self.timeout,
                    max_attempts: self.max_attempts,
                    faults: self.faults.clone(),
                };
                JobGroups::spawn(context, self.job_groups)
            })
            .as_ref()
    }

    /// The counted first attempt of `op` run in a group transaction, if
    /// groups are on: what it did, as [`JobRunner::attempt_once`] tells it;
    /// `None`: run it alone.
    async fn attempt_in_group(
        &self,
        op: OperationId,
        job: Option<&QueueJob>,
    ) -> Option<(Option<Started>, Result<AttemptResult, AttemptError>)> {
        let started = |number, kind| Some(Started { count: number, kind });
        Some(match self.groups()?.run(op, job.cloned()).await? {
            GroupReply::Settled(Settled::Finished {
                number,
                kind,
                status,
                ack,
            }) => (started(number, kind), Ok(AttemptResult::Finished(status, ack))),
            GroupReply::Settled(Settled::Exhausted { number, kind, ack }) => {
                (started(number, kind), Ok(AttemptResult::Exhausted(ack)))
            }
            GroupReply::Settled(Settled::AlreadyFinished) => (None, Ok(AttemptResult::AlreadyFinished)),
            GroupReply::Settled(Settled::Missing) => (None, Ok(AttemptResult::Missing)),
            GroupReply::Failed { running, failure } => (
                started(running.number, running.kind),
                Err(match failure {
                    Failure::Error(e) => AttemptError::from_error(e),
                    Failure::Panicked(join) => AttemptError::Retry(format!("panicked: {join}")),
                    Failure::TimedOut(limit) => AttemptError::Retry(format!("timed out after {limit:?}")),
                }),
            ),
        })
    }

    /// The pool for apalis's fetch, acknowledgement and heartbeat (see
    /// `queue_pool`).
    pub fn queue_pool(&self) -> &PgPool {
        &self.queue_pool
    }

    /// The name the attempts' rows carry, also those its fetches count.
    pub fn attempt_name(&self) -> &str {
        &self.worker
    }

    /// Names the attempts' rows after this process's queue loops.
    pub fn named(mut self, worker: String) -> Self {
        self.worker = worker;
        self
    }

    /// Arms the test-only faults (see `faults`).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Once `stopping` is cancelled, jobs between attempts are handed back
    /// instead of waiting for their next attempt.
    pub fn stopping_on(mut self, stopping: CancellationToken) -> Self {
        self.stopping = stopping;
        self
    }

    /// Waits `delay`, or returns `Err(Stopping)` if the process stops first.
    async fn pause(&self, delay: Duration) -> Result<(), JobError> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.stopping.cancelled() => Err(JobError::Stopping),
        }
    }

    /// Runs the job's attempts. `start`: whether the fetch counted the first
    /// one; every later attempt counts itself. `job`: the queue job that
    /// delivered it, marked `Done` by the attempt's transaction that settles
    /// the operation (then `Ack::Committed`).
    pub async fn run(
        &self,
        op: OperationId,
        mut start: Start,
        job: Option<&QueueJob>,
    ) -> Result<Ack, JobError> {
        let started = std::time::Instant::now();
        // The first attempt, if the fetch counted it, in a group transaction.
        let mut grouped = match start {
            Start::Counted => self.attempt_in_group(op, job).await,
            Start::Here => None,
        };
        let mut unstarted = 0u32;
        loop {
            let span = tracing::info_span!(
                "attempt",
                kind = tracing::field::Empty,
                attempt = tracing::field::Empty
            );
            let (attempt, result) = match grouped.take() {
                Some(done) => done,
                None => self.attempt_once(op, start, job).instrument(span).await,
            };
            let Some(attempt) = attempt else {
                match result {
                    // The start changed nothing: final already, or gone.
                    Ok(_) => {
                        tracing::info!("operation already finished or gone: redelivery, nothing to do");
                        metrics::counter!(JOBS, "kind" => "unknown", "outcome" => "redelivered").increment(1);
                        return Ok(Ack::ByQueue);
                    }
                    // The opening failed (the database unreachable, most
                    // likely): no attempt is known to have been counted. Wait
                    // and try again; past the bound, hand the job back to
                    // apalis.
                    Err(e) => {
                        let reason = e.reason();
                        unstarted += 1;
                        if unstarted >= self.max_attempts {
                            return Err(JobError::NotStarted(reason));
                        }
                        tracing::warn!(reason, "cannot start attempt; retrying");
                        self.pause(backoff(unstarted)).await?;
                        continue;
                    }
                }
            };
            // This attempt opened, counted: a next one counts itself.
            start = Start::Here;
            let (number, kind) = (attempt.number(), attempt.kind.as_str());
            match result {
                Ok(AttemptResult::Exhausted(ack)) => {
                    // Started past the bound (earlier attempts killed their
                    // workers): it did not run; its transaction finished the
                    // operation `failed`.
                    tracing::error!(
                        attempts = attempt.count - 1,
                        "operation finished failed after its last attempt"
                    );
                    record_job(kind, "exhausted", started);
                    return Ok(ack);
                }
                Ok(result) => {
                    tracing::info!(?result, kind, "job done");
                    let (outcome, ack) = match result {
                        AttemptResult::Finished(OperationStatus::Succeeded, ack) => ("succeeded", ack),
                        AttemptResult::Finished(_, ack) => ("refused", ack),
                        _ => ("redelivered", Ack::ByQueue),
                    };
                    record_job(kind, outcome, started);
                    return Ok(ack);
                }
                Err(AttemptError::Permanent(reason)) => {
                    tracing::error!(reason, "job cannot succeed; finishing it failed");
                    self.record_error(op, attempt.count, &reason).await;
                    record_job(kind, "exhausted", started);
                    return self.give_up(op, attempt.count).await;
                }
                Err(AttemptError::Retry(reason)) => {
                    self.record_error(op, attempt.count, &reason).await;
                    if number >= self.max_attempts {
                        tracing::error!(reason, attempt = number, "last attempt failed");
                        record_job(kind, "exhausted", started);
                        return self.give_up(op, attempt.count).await;
                    }
                    metrics::counter!(JOBS, "kind" => kind, "outcome" => "retried").increment(1);
                    let delay = backoff(number);
                    tracing::warn!(reason, attempt = number, ?delay, "attempt failed; retrying");
                    self.pause(delay).await?;
                }
            }
        }
    }

    /// One attempt in its own task, so that a panic is an error here rather
    /// than a dead worker, and under the time limit, so that a hung attempt
    /// is aborted (its transaction rolls back) rather than stuck. The same
    /// limit is the attempt's `statement_timeout`, so that Postgres drops a
    /// hung statement (and its locks) too.
    ///
    /// The attempt opens with its start (`job::open_attempt`: counted and
    /// committed, then the job's transaction, one round trip). The attempt
    /// as started comes back beside the result whatever happened after its
    /// start (an error, a panic, the time limit); `None`: not started, or
    /// the start changed nothing (the operation final or gone).
    async fn attempt_once(
        &self,
        op: OperationId,
        start: Start,
        job: Option<&QueueJob>,
    ) -> (Option<Started>, Result<AttemptResult, AttemptError>) {
        let (connections, notifier, worker) = (
            self.connections.clone(),
            self.notifier.clone(),
            self.worker.clone(),
        );
        let job = job.cloned();
        let (ttl, limit, faults, max_attempts) =
            (self.ttl, self.timeout, self.faults.clone(), self.max_attempts);
        let slot = Arc::new(OnceLock::new());
        let started = slot.clone();
        let task = tokio::spawn(
            async move {
                let mut conn = connections.acquire().await?;
                // The attempt borrows the connection; once it has ended
                // cleanly the connection is kept for the next one.
                let result = async {
                    let attempt = match job::open_attempt(&mut conn, op, &worker, limit, start).await? {
                        Opened::Locked(attempt) => attempt,
                        Opened::AlreadyFinished => return Ok(AttemptResult::AlreadyFinished),
                        Opened::Missing => return Ok(AttemptResult::Missing),
                    };
                    let this = Started {
                        count: attempt.number,
                        kind: attempt.kind,
                    };
                    let _ = started.set(this);
                    let span = tracing::Span::current();
                    span.record("kind", this.kind.as_str());
                    span.record("attempt", this.number());
                    if this.number() > max_attempts {
                        // Past the bound: finished `failed` under the lock the
                        // attempt holds, in its transaction; the attempts that
                        // ran are the ones before it.
                        return attempt
                            .give_up(this.count - 1, ttl, &notifier, job.as_ref())
                            .await;
                    }
                    faults.before_attempt(op, this.kind, this.number(), attempt.request());
                    attempt.run(ttl, &notifier, job.as_ref()).await
                }
                .await;
                if result.is_ok() {
                    connections.keep(conn);
                }
                result
            }
            .in_current_span(),
        );
        let abort = task.abort_handle();
        let result = match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(e))) => Err(AttemptError::from_error(e)),
            Ok(Err(join)) if join.is_panic() => Err(AttemptError::Retry(format!("panicked: {join}"))),
            Ok(Err(join)) => Err(AttemptError::Retry(format!("cancelled: {join}"))),
            Err(_) => {
                abort.abort();
                Err(AttemptError::Retry(format!("timed out after {:?}", self.timeout)))
            }
        };
        (slot.get().copied(), result)
    }

    /// The failed attempt's error on its row (the ops console shows it). A
    /// failure here changes nothing else: the next start closes the row.
    async fn record_error(&self, op: OperationId, attempt: i32, reason: &str) {
        if let Err(e) = job::record_attempt_error(&self.queue_pool, op, attempt, reason).await {
            tracing::warn!(error = %e, "could not record the attempt's error");
        }
    }

    /// Finishes the operation `failed` in a transaction of its own (after
    /// a rollback): the queue acknowledges the job as usual.
    async fn give_up(&self, op: OperationId, attempts: i32) -> Result<Ack, JobError> {
        if job::finish_exhausted(&self.pool, op, attempts, self.ttl).await? {
            tracing::error!(attempts, "operation finished failed after its last attempt");
        }
        Ok(Ack::ByQueue)
    }
}

/// `idemq_jobs_total{kind,outcome}` and `idemq_job_duration_seconds{kind}`.
fn record_job(kind: &'static str, outcome: &'static str, started: std::time::Instant) {
    metrics::counter!(JOBS, "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!(JOB_DURATION, "kind" => kind).record(started.elapsed().as_secs_f64());
}

enum AttemptError {
    Retry(String),
    Permanent(String),
}

impl AttemptError {
    /// The core's classifier decides: transient and unexplained database
    /// failures get another attempt (up to the bound); a value the database
    /// refuses or inconsistent stored data fails the same way every time.
    fn from_error(e: Error) -> AttemptError {
        if e.class().may_pass_on_retry() {
            AttemptError::Retry(e.to_string())
        } else {
            AttemptError::Permanent(e.to_string())
        }
    }

    fn reason(self) -> String {
        match self {
            AttemptError::Retry(reason) | AttemptError::Permanent(reason) => reason,
        }
    }
}

/// An attempt as its start counted it.
#[derive(Debug, Clone, Copy)]
struct Started {
    /// `operations.attempts` after the start.
    count: i32,
    kind: OperationKind,
}

impl Started {
    fn number(self) -> u32 {
        u32::try_from(self.count).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let d = backoff(attempt);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }
}
